"""Readers of the standard point-cloud benchmarks in their published on-disk formats.

None of these datasets installs offline; get them as the Point-BERT / Point-MAE ``DATASET.md`` describes and
point ``root`` at them (docs/point.md):

- ModelNet40, ``modelnet40_normal_resampled/``: ``modelnet40_shape_names.txt``,
  ``modelnet40_{train,test}.txt``
  (ids like ``airplane_0001``), and ``<class>/<id>.txt`` with one ``x,y,z,nx,ny,nz`` row per point; or the
  Point-BERT cache ``modelnet40_{split}_8192pts_fps.dat`` (a pickle of ``[list of [8192, 6] float32 arrays,
  list of [1] int arrays]``), read by walking its opcodes (``dat_cache``): nothing is unpickled.
  Clouds are normalised like ``pc_normalize`` (centroid, unit sphere).
- ScanObjectNN, ``h5_files/``: ``main_split/{training,test}_objectdataset.h5`` (OBJ_BG),
  ``main_split_nobg/...`` (OBJ_ONLY), ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``
  (PB_T50_RS); datasets ``data`` ``[c, 2048, 3]`` and ``label`` ``[c]``; used as stored (no normalisation).
- ShapeNet-55, ``ShapeNet55-34/``: ``ShapeNet-55/{train,test}.txt`` listing ``<synset>-<model>.npy`` files of
  ``shapenet_pc/`` (``[8192, 3]`` each); label = index of the synset among the sorted train synsets.

Shapes: c clouds, m points per cloud.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from peftkit.core.errors import DataError
from peftkit.data.points.dat_cache import read_array_pickle
from peftkit.data.points.sampling import normalize_unit_sphere


@dataclass
class Clouds:
    points: list[np.ndarray]  # each [m, 3] float32
    labels: np.ndarray  # [c] int64
    names: list[str] = field(default_factory=list)  # class names


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found: {path} (see docs/point.md for where to get it)")
    return path


def _lines(path: Path) -> list[str]:
    return [s.strip() for s in _need(path, "list file").read_text().splitlines() if s.strip()]


def _checked(p: np.ndarray, where: str) -> np.ndarray:
    if p.ndim != 2 or p.shape[1] < 3 or len(p) == 0:
        raise DataError(f"{where}: expected [points, >=3] coordinates, got shape {list(p.shape)}")
    if not np.isfinite(p[:, :3]).all():
        raise DataError(f"{where}: NaN or infinite coordinates")
    return p[:, :3].astype(np.float32)


def read_modelnet(root: Path, split: str, num_category: int = 40, cache_points: int = 8192) -> Clouds:
    """ModelNet40/10 ``split`` ("train" or "test"), from the .dat cache if present, else the text files."""
    names = _lines(root / f"modelnet{num_category}_shape_names.txt")
    dat = root / f"modelnet{num_category}_{split}_{cache_points}pts_fps.dat"
    if dat.is_file():
        try:
            pts, labels = read_array_pickle(dat.read_bytes(), str(dat))
        except (ValueError, TypeError) as e:  # not a [points, labels] pair
            raise DataError(f"{dat}: not a Point-BERT ModelNet cache ({e})") from None
        clouds = [
            normalize_unit_sphere(_checked(np.asarray(p), f"{dat.name}[{i}]")) for i, p in enumerate(pts)
        ]
        return Clouds(clouds, np.array([int(np.asarray(lab).reshape(-1)[0]) for lab in labels]), names)
    index = {n: i for i, n in enumerate(names)}
    clouds, labels = [], []
    for shape_id in _lines(root / f"modelnet{num_category}_{split}.txt"):
        cls = shape_id.rsplit("_", 1)[0]
        if cls not in index:
            raise DataError(f"{shape_id}: class '{cls}' is not in modelnet{num_category}_shape_names.txt")
        f = _need(root / cls / f"{shape_id}.txt", "ModelNet shape")
        try:
            arr = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
        except ValueError as e:
            raise DataError(f"{f}: malformed ModelNet text file ({e})") from None
        clouds.append(normalize_unit_sphere(_checked(arr, f.name)))
        labels.append(index[cls])
    return Clouds(clouds, np.array(labels, dtype=np.int64), names)


SCANOBJECTNN_FILES = {
    "OBJ_BG": ("main_split", "objectdataset"),
    "OBJ_ONLY": ("main_split_nobg", "objectdataset"),
    "PB_T50_RS": ("main_split", "objectdataset_augmentedrot_scale75"),
}
SCANOBJECTNN_CLASSES = (
    "bag",
    "bin",
    "box",
    "cabinet",
    "chair",
    "desk",
    "display",
    "door",
    "shelf",
    "table",
    "bed",
    "pillow",
    "sink",
    "sofa",
    "toilet",
)


def read_scanobjectnn(root: Path, variant: str, split: str) -> Clouds:
    """ScanObjectNN ``variant`` (OBJ_BG, OBJ_ONLY, PB_T50_RS), ``split`` "train" or "test"."""
    import h5py

    if variant not in SCANOBJECTNN_FILES:
        raise DataError(f"unknown ScanObjectNN variant '{variant}'; choose {', '.join(SCANOBJECTNN_FILES)}")
    folder, stem = SCANOBJECTNN_FILES[variant]
    f = _need(root / folder / f"{'training' if split == 'train' else 'test'}_{stem}.h5", "ScanObjectNN file")
    try:
        with h5py.File(f, "r") as h:
            data, labels = np.asarray(h["data"], dtype=np.float32), np.asarray(h["label"]).reshape(-1)
    except (OSError, KeyError) as e:
        raise DataError(f"{f}: not a ScanObjectNN h5 file with 'data' and 'label' ({e})") from None
    if data.ndim != 3 or data.shape[2] < 3 or len(data) != len(labels):
        raise DataError(
            f"{f}: expected data [c, m, 3] and label [c], got {list(data.shape)} and {list(labels.shape)}"
        )
    clouds = [_checked(p, f"{f.name}[{i}]") for i, p in enumerate(data)]
    return Clouds(clouds, labels.astype(np.int64), list(SCANOBJECTNN_CLASSES))


def read_shapenet55(
    root: Path, split: str, pc_dir: str = "shapenet_pc", names: list[str] | None = None
) -> Clouds:
    """ShapeNet-55 ``split`` from the Point-BERT lists; ``names`` fixes the synset order (default: sorted)."""
    files = _lines(root / "ShapeNet-55" / f"{split}.txt")
    synsets = [f.split("-", 1)[0] for f in files]
    names = names or sorted(set(synsets))
    index = {s: i for i, s in enumerate(names)}
    clouds, labels = [], []
    for f, s in zip(files, synsets):
        if s not in index:
            raise DataError(f"{f}: synset {s} is not among the training synsets")
        path = _need(root / pc_dir / f, "ShapeNet-55 cloud")
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{path}: not a .npy point cloud ({e})") from None
        clouds.append(normalize_unit_sphere(_checked(arr, path.name)))
        labels.append(index[s])
    return Clouds(clouds, np.array(labels, dtype=np.int64), names)
