"""Point-cloud inputs: ``peftkit data kicad`` / ``peftkit pretrain`` options, pretraining checkpoints (a
truncated or code-carrying ``checkpoint.pt`` is refused, nothing runs from it) and VRML meshes (deep
nesting, bad transforms, bad indices: one VrmlError line each, never a RecursionError / IndexError)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from peftkit.core.errors import DataError
from peftkit.data.points.vrml import VrmlError, parse_vrml
from reliability.harness import Case, Workspace, check_exception, run_case

PRETRAIN = {
    "seed": 0,
    "backbone": "tiny_point",
    "sources": ["synthetic"],
    "synthetic_count": 8,
    "stored_points": 128,
    "num_points": 128,
    "epochs": 1,
    "batch_size": 4,
    "threads": 1,
}


def _pretrain(*overrides: str, **changes: Any) -> Callable[[Workspace], list[str]]:
    def argv(ws: Workspace) -> list[str]:
        tree = {"out_dir": str(ws.out), **PRETRAIN, **changes}
        path = ws.write("pretrain.yaml", yaml.safe_dump(tree))
        return ["pretrain", str(path), *overrides]

    return argv


def _planted(data: bytes | None) -> Callable[[Workspace], list[str]]:
    """out_dir holds a damaged (bytes) or code-carrying (None) ``checkpoint.pt``; then pretrain."""

    def argv(ws: Workspace) -> list[str]:
        target = ws.out / "checkpoint.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            torch.save({"model": _Payload(str(ws.root / "pwned"))}, target)
        else:
            target.write_bytes(data)
        return _pretrain()(ws)

    return argv


class _Payload:
    """Unpickling this object would create a file: proof that no code ran when it is refused."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


CASES = [
    Case("kicad-points-text", lambda ws: ["data", "kicad", "points=abc"], r"points must be a whole number"),
    Case("kicad-points-range", lambda ws: ["data", "kicad", "points=1"], r"points must be between"),
    Case("kicad-cache-empty", lambda ws: ["data", "kicad", "cache="], r"cache must be a directory path"),
    Case("kicad-unknown-option", lambda ws: ["data", "kicad", "colour=red"], r"unknown option 'colour=red'"),
    Case("kicad-write-split", lambda ws: ["data", "kicad", "write_split=maybe"], r"write_split must be true"),
    Case("pretrain-epochs-text", _pretrain("epochs=abc"), r"epochs"),
    Case("pretrain-batch-size-zero", _pretrain("batch_size=0"), r"batch_size"),
    Case("pretrain-lr-nan", _pretrain("lr=nan"), r"lr"),
    Case("pretrain-mask-ratio", _pretrain("mask_ratio=1.5"), r"mask_ratio"),
    Case("pretrain-unknown-key", _pretrain("epochz=3"), r"epochz"),
    Case("pretrain-points", _pretrain("num_points=4096"), r"num_points \(4096\) must be <= stored_points"),
    Case("pretrain-missing-config", lambda ws: ["pretrain", str(ws.root / "none.yaml")], r"none\.yaml"),
    Case(
        "pretrain-truncated-checkpoint",
        _planted(b"PK\x03\x04trunc"),
        r"checkpoint\.pt is truncated or corrupt",
    ),
    Case("pretrain-code-in-checkpoint", _planted(None), r"checkpoint\.pt holds more than tensors"),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_point_input(case: Case, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> None:
    run_case(case, ws, capfd)
    assert not (ws.root / "pwned").exists()  # nothing ran from a planted file


HEADER = "#VRML V2.0 utf8\n"
FACES = (
    "Shape { geometry IndexedFaceSet { coord Coordinate { point [0 0 0, 1 0 0, 0 1 0] } "
    "coordIndex [0 1 2 -1] } }"
)


def _nested(depth: int) -> str:
    return HEADER + "Group { children [ " * depth + FACES + " ] }" * depth


MESHES = [
    ("deep-nesting", _nested(3000), r"nest"),
    ("rotation-3-numbers", HEADER + f"Transform {{ rotation 0 0 1 children [ {FACES} ] }}", r"rotation"),
    ("rotation-5-numbers", HEADER + f"Transform {{ rotation 0 0 1 2 3 children [ {FACES} ] }}", r"rotation"),
    ("scale-nan", HEADER + f"Transform {{ scale nan 1 1 children [ {FACES} ] }}", r"scale"),
    (
        "index-out-of-range",
        HEADER + FACES.replace("[0 1 2 -1]", "[0 1 7 -1]"),
        r"coordIndex refers to vertex 7 but there are 3",
    ),
    ("no-header", FACES, r"not a VRML 2\.0 file"),
    ("no-triangles", HEADER + "Group { children [ ] }", r"no triangle"),
    ("unclosed-brace", HEADER + "Group { children [ " + FACES, r"."),
]


@pytest.mark.parametrize(("text", "match"), [pytest.param(t, m, id=i) for i, t, m in MESHES])
def test_bad_mesh(text: str, match: str) -> None:
    with pytest.raises(DataError) as info:
        parse_vrml(text)
    check_exception(info.value, VrmlError, match)


def test_a_good_mesh_still_parses() -> None:
    mesh = parse_vrml(HEADER + f"Transform {{ rotation 0 0 1 {math.pi / 2} children [ {FACES} ] }}")
    assert mesh.faces.shape == (1, 3) and mesh.vertices.shape == (3, 3)
    assert abs(mesh.vertices[1, 1] - 1.0) < 1e-9  # (1, 0, 0) rotated a quarter turn about z
