"""``peftkit data kicad`` end to end on a small .deb built here (no download): extract, read, sample, skip."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from peftkit.data.points import kicad as K

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

GOOD = """#VRML V2.0 utf8
Shape { appearance Appearance { material DEF PIN-01 Material { diffuseColor 1 1 1 } }
  geometry IndexedFaceSet { coord Coordinate { point [0 0 0, 1 0 0, 1 1 0, 0 1 0, 0 0 1] }
  coordIndex [0 1 2 3 -1 0 1 4 -1 1 2 4 -1] } }
"""


def build_deb(root: Path) -> Path:
    pkg = root / "pkg"
    models = pkg / K.MODELS_DIR
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: kicad-packages3d\nVersion: 0.0-test\nArchitecture: all\n"
        "Maintainer: t <t@t>\nDescription: t\n")
    libs = {"LibA": ["A-1_W1mm", "A-2_W1mm", "B_1"], "LibB": ["C-1", "D_x"], "Other": ["Z"]}
    for lib, names in libs.items():
        (models / f"{lib}.3dshapes").mkdir(parents=True)
        for n in names:
            bad = "#VRML V2.0 utf8\nGroup {"
            (models / f"{lib}.3dshapes" / f"{n}.wrl").write_text(GOOD if n != "D_x" else bad)
    dl = root / "cache" / "downloads"
    dl.mkdir(parents=True)
    deb = dl / "kicad-packages3d_0.0-test_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


def test_prepare_from_a_local_deb(tmp_path: Path) -> None:
    deb = build_deb(tmp_path)
    cache = tmp_path / "cache"
    assert K.fetch_deb(cache) == deb                                    # found: no apt-get
    names = K.list_deb_models(deb)
    assert sorted(names) == ["LibA", "LibB", "Other"]
    assert sorted(names["LibA"]) == ["A-1_W1mm", "A-2_W1mm", "B_1"]
    split = K.make_split(names, classes=("LibA", "LibB"), test_fraction=0.3)
    report = K.prepare(split, cache, points=64)
    assert report["prepared"] == 4 and report["skipped"] == 1 and "D_x" in report["skipped_files"][0]
    assert not (cache / "kicad" / "wrl" / K.MODELS_DIR / "Other.3dshapes").exists()   # only the classes
    z = np.load(K.clouds_dir(cache, 64) / "LibA" / "A-1_W1mm.npz")
    assert z["points"].shape == (64, 3) and list(z["materials"]) == ["PIN-01"]
    log = json.loads((K.clouds_dir(cache, 64) / "prepare_log.json").read_text())
    assert log["skipped"] == 1
    again = K.prepare(split, cache, points=64)                          # cached: nothing re-sampled
    assert again["prepared"] == 4


@pytest.mark.parametrize("odd", ["x; touch INJECTED", "it's here", "$(touch INJECTED2)"])
def test_cache_paths_with_shell_characters_run_nothing(tmp_path: Path, odd: str, monkeypatch) -> None:
    """The archive is read through an argument list and Python's tarfile: no shell ever sees the path."""
    root = tmp_path / odd
    deb = build_deb(root)
    monkeypatch.chdir(tmp_path)
    names = K.list_deb_models(deb)
    assert sorted(names["LibB"]) == ["C-1", "D_x"]
    split = K.make_split(names, classes=("LibA", "LibB"), test_fraction=0.3)
    report = K.prepare(split, root / "cache", points=64)
    assert report["prepared"] == 4
    assert not list(tmp_path.rglob("INJECTED*"))                       # nothing ran


def test_bad_transform_is_skipped_counted_and_reported(tmp_path: Path) -> None:
    """One file with a 2-number rotation or 3,000 nested Groups is skipped; the others are sampled."""
    deb = build_deb(tmp_path)
    cache = tmp_path / "cache"
    split = K.make_split(K.list_deb_models(deb), classes=("LibA", "LibB"), test_fraction=0.3)
    wrl = K.extract_libraries(deb, ["LibA", "LibB"], cache / "kicad" / "wrl")
    bad_rot = "#VRML V2.0 utf8\nTransform { rotation 0 1 children [ " + GOOD.split("\n", 1)[1] + " ] }"
    (wrl / "LibA.3dshapes" / "A-1_W1mm.wrl").write_text(bad_rot)
    deep = "#VRML V2.0 utf8\n" + "Group { children [ " * 3000 + "] }" * 3000
    (wrl / "LibA.3dshapes" / "B_1.wrl").write_text(deep)
    report = K.prepare(split, cache, points=64)
    assert report["prepared"] == 2 and report["skipped"] == 3
    text = "\n".join(report["skipped_files"])
    assert "Transform.rotation" in text and "nested deeper" in text and "D_x" in text


def test_no_shell_in_the_kicad_reader() -> None:
    src = Path(K.__file__).read_text()
    assert "shell=True" not in src and "os.system" not in src
