"""Unlabelled shapes for pretraining: the 1,000 procedural objects of ``pybullet_data/random_urdfs`` (zlib).

The pybullet wheel is downloaded with ``pip download --no-deps pybullet==3.2.7`` into the cache and only
``pybullet_data/random_urdfs/*/*.obj`` is read from it (pybullet itself is never installed or imported).
Each Wavefront OBJ (``v``/``f`` records; polygons; ``v/vt/vn`` and negative indices) is sampled like the
KiCad models and cached as ``.npz``.

Shapes: v vertices, f triangles.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from peftkit.core.errors import DataError
from peftkit.data.points.sampling import cache_root, mesh_to_cloud, save_cloud
from peftkit.data.points.vrml import Mesh, triangulate

PYBULLET = "pybullet==3.2.7"
PREFIX = "pybullet_data/random_urdfs/"


def parse_obj(text: str) -> Mesh:
    """Parse Wavefront OBJ text (vertices and faces; ``usemtl`` names become materials).

    Raises:
        DataError: for a malformed record, an index out of range, or a file without faces.
    """
    verts: list[list[float]] = []
    polys: list[int] = []
    poly_mat: list[int] = []
    mats: dict[str, int] = {}
    cur = mats.setdefault("", 0)
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "v":
                verts.append([float(x) for x in parts[1:4]])
                if len(verts[-1]) != 3:
                    raise ValueError("a vertex needs 3 coordinates")
            elif parts[0] == "f":
                idx = [int(p.split("/")[0]) for p in parts[1:]]
                idx = [i - 1 if i > 0 else len(verts) + i for i in idx]  # 1-based; negative = relative
                if len(idx) < 3 or min(idx) < 0 or max(idx) >= len(verts):
                    raise ValueError(f"bad face {parts[1:]} with {len(verts)} vertices so far")
                polys.extend([*idx, -1])
                poly_mat.append(cur)
            elif parts[0] == "usemtl":
                cur = mats.setdefault(" ".join(parts[1:]), len(mats))
        except ValueError as e:
            raise DataError(f"line {lineno}: {e}") from None
    if not poly_mat:
        raise DataError("the OBJ file has no faces")
    index = np.array(polys, dtype=np.int64)
    faces = triangulate(index)
    sizes = np.diff(np.concatenate([[-1], np.flatnonzero(index == -1)])) - 1  # vertices per polygon
    face_mat = np.repeat(np.array(poly_mat), np.maximum(sizes - 2, 0))
    return Mesh(np.array(verts, dtype=np.float64), faces, face_mat, list(mats))


def fetch_wheel(cache: Path) -> Path:
    """The pybullet wheel in ``cache/downloads`` (``pip download --no-deps`` when missing)."""
    dl = cache / "downloads"
    found = sorted(dl.glob("pybullet-3.2.7-*.whl"))
    if found:
        return found[-1]
    dl.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", PYBULLET, "-d", str(dl)],
        capture_output=True,
        text=True,
    )
    found = sorted(dl.glob("pybullet-3.2.7-*.whl"))
    if res.returncode != 0 or not found:
        raise DataError(f"pip download {PYBULLET} failed: {res.stderr.strip()[-200:]}")
    return found[-1]


def clouds_dir(cache: Path, points: int) -> Path:
    return cache / "urdf" / f"clouds_{points}"


def prepare(cache: Path | None = None, points: int = 2048) -> dict:
    """Sample every ``random_urdfs`` object into ``cache/urdf/clouds_<points>``; bad files are counted."""
    cache = cache or cache_root()
    out = clouds_dir(cache, points)
    done, skipped = 0, []
    with zipfile.ZipFile(fetch_wheel(cache)) as z:
        names = sorted(n for n in z.namelist() if n.startswith(PREFIX) and n.endswith(".obj"))
        for name in tqdm(names, desc="pybullet random_urdfs: sampling", unit="obj"):
            target = out / f"{Path(name).stem}.npz"
            if target.is_file():
                done += 1
                continue
            try:
                mesh = parse_obj(z.read(name).decode("utf-8", errors="replace"))
                pts, mat = mesh_to_cloud(
                    mesh, points, seed=int(Path(name).stem) if Path(name).stem.isdigit() else 0
                )
                save_cloud(target, pts, mat, mesh.materials)
                done += 1
            except DataError as e:
                skipped.append(f"{name}: {e}")
    report = {"prepared": done, "skipped": len(skipped), "skipped_files": skipped}
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare_log.json").write_text(json.dumps(report, indent=1))
    return report
