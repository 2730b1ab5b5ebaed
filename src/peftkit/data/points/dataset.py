"""Registered point-cloud datasets: ``kicad``, ``synthetic_shapes``, ``modelnet40``, ``scanobjectnn`` and
``shapenet55``.

Every builder is called as ``builder(backbone=..., seed=..., **kwargs)`` and returns a ``TaskData`` whose
batches are ``{"points": [b, n, 3], "labels": [b]}`` (``pad_key=None``). Training batches follow Point-MAE:
FPS to 1.2 n then a random n points, then augmentation (``scale_translate`` by default; ``rotate`` adds a
rotation about the up axis; ``none``); evaluation batches take FPS to n and no augmentation. ``n`` defaults to
the backbone's ``num_points``.

Shapes: c clouds, m stored points, n model points, b batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from peftkit.core.errors import ConfigError, DataError
from peftkit.core.registry import register_dataset
from peftkit.data.base import Batch, TaskData
from peftkit.data.points import transforms as T
from peftkit.ops.point_sizes import default_num_points

AUGMENTS = ("scale_translate", "rotate", "scale_translate+rotate", "none")


class CloudDataset(Dataset[tuple]):
    """Clouds ``[c, m, 3]`` (or a list of ``[m_i, 3]`` with ``m_i >= n``) and integer labels.

    With ``with_index`` an item is ``(cloud, label, i)``: training batches then carry ``example_index``.
    """

    def __init__(
        self, points: np.ndarray | Sequence[np.ndarray], labels: np.ndarray, with_index: bool = False
    ) -> None:
        if len(points) != len(labels):
            raise DataError(f"{len(points)} clouds but {len(labels)} labels")
        self.points, self.labels = points, np.asarray(labels, dtype=np.int64)
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple:
        if self.with_index:
            return self.points[i], int(self.labels[i]), int(i)
        return self.points[i], int(self.labels[i])


def make_collate(
    n: int,
    train: bool,
    augment: str = "scale_translate",
    fps_ordered: bool = False,
    up: str = "y",
    ratio: float = T.FPS_RATIO,
) -> Callable[[list[tuple[np.ndarray, int]]], Batch]:
    """Batch ``(cloud, label[, index])`` items into ``{"points": [b, n, 3], "labels": [b]}``; training
    batches of indexed items also get ``example_index [b]`` (evaluation batches never do)."""
    if augment not in AUGMENTS:
        raise ConfigError(f"unknown augment '{augment}'; choose one of: {', '.join(AUGMENTS)}")

    def collate(items: list[tuple]) -> Batch:
        m = min(len(it[0]) for it in items)
        pts = torch.from_numpy(
            np.stack([np.asarray(it[0][:m, :3], dtype=np.float32) for it in items])
        )  # [b, m, 3]
        if not torch.isfinite(pts).all():
            raise DataError("a point cloud in this batch has NaN or infinite coordinates")
        pts = T.resample(pts, n, train=train, ratio=ratio, fps_ordered=fps_ordered)  # [b, n, 3]
        if train and "scale_translate" in augment:
            pts = T.scale_and_translate(pts)
        if train and "rotate" in augment:
            pts = T.rotate_up(pts, up=up)
        batch = {"points": pts, "labels": torch.tensor([it[1] for it in items], dtype=torch.long)}
        if train and len(items[0]) == 3:
            batch["example_index"] = torch.tensor([it[2] for it in items], dtype=torch.long)  # [b]
        return batch

    return collate


def task_data(
    train: Dataset,
    test: Dataset,
    num_labels: int,
    n: int,
    augment: str,
    fps_ordered: bool,
    label_names: Sequence[str],
    up: str = "y",
    val: Dataset | None = None,
) -> TaskData:
    return TaskData(
        train=train,
        val=val,
        test=test,
        num_labels=num_labels,
        collate=make_collate(n, True, augment, fps_ordered, up),
        eval_collate=make_collate(n, False, augment, fps_ordered, up),
        metrics=("accuracy", "macro_f1"),
        label_names=tuple(label_names),
        pad_key=None,
    )


def _n(backbone: str, num_points: int | None) -> int:
    return int(num_points) if num_points else default_num_points(backbone)


@register_dataset(
    "kicad", "KiCad 3D models (12 libraries, family-disjoint train/val/test); run `peftkit data kicad` first"
)
def kicad(
    backbone: str = "point_mae_small",
    seed: int = 0,
    num_points: int | None = None,
    stored_points: int = 2048,
    augment: str = "scale_translate",
    val: str = "split",
    cache: str | None = None,
    max_per_class: int | None = None,
    split_file: str | None = None,
    example_index: bool = False,
) -> TaskData:
    """KiCad classification on the shipped family-disjoint split.

    ``val="split"`` validates on the val split carved from train (whole footprint families, see
    ``peftkit.data.points.kicad.carve_val``) and trains on train minus val; ``val="none"`` trains on all of
    train and skips validation. Model selection on the test split is refused. The default augmentation is
    scale + translate without rotation: KiCad parts keep their footprint's canonical orientation
    (docs/results/point_peft.md). ``example_index=true`` adds each training cloud's index to its batches
    (Point-PEFT's ``cache_query`` reads it).
    """
    from peftkit.data.points import kicad as K
    from peftkit.data.points.sampling import cache_root, load_cloud

    if val not in ("split", "none"):
        hint = " (selecting on the test split is not allowed)" if val == "test" else ""
        raise ConfigError(f"kicad: val must be 'split' or 'none', got '{val}'{hint}")
    split = K.load_split(Path(split_file) if split_file else K.SPLIT_FILE)
    if val == "split" and "val" not in split:
        raise DataError(f"the KiCad split {split_file or K.SPLIT_FILE} has no val part; use data.val=none")
    n = _n(backbone, num_points)
    need = int(np.ceil(n * T.FPS_RATIO))
    if stored_points < need:
        raise ConfigError(
            f"kicad: the clouds cached with stored_points={stored_points} are too small for num_points={n} "
            f"(training takes FPS to {need}); prepare them with: peftkit data kicad points={need}"
        )
    root = K.clouds_dir(Path(cache) if cache else cache_root(), stored_points)
    libs = split["classes"]
    held = {lib: set(split.get("val", {}).get(lib, [])) if val == "split" else set() for lib in libs}
    names_of = {
        "train": {lib: [x for x in split["train"][lib] if x not in held[lib]] for lib in libs},
        "val": {lib: sorted(held[lib]) for lib in split["classes"]},
        "test": split["test"],
    }
    parts = {}
    for part in ("train", "val", "test") if val == "split" else ("train", "test"):
        pts, labels = [], []
        for c, lib in enumerate(split["classes"]):
            names = names_of[part][lib][:max_per_class] if max_per_class else names_of[part][lib]
            files = [root / lib / f"{name}.npz" for name in names]
            files = [f for f in files if f.is_file()]
            pts += [load_cloud(f)[:need] for f in files]  # FPS order: the first `need` points are FPS(need)
            labels += [c] * len(files)
        if not pts:
            raise DataError(
                f"no prepared KiCad clouds in {root}; run: peftkit data kicad points={stored_points}"
            )
        indexed = example_index and part == "train"
        parts[part] = CloudDataset(np.stack(pts), np.array(labels), with_index=indexed)
    return task_data(
        parts["train"],
        parts["test"],
        len(split["classes"]),
        n,
        augment,
        True,
        split["classes"],
        up="z",
        val=parts.get("val"),
    )


@register_dataset("synthetic_shapes", "random primitives (sphere, cube, cylinder, cone, torus) for tests")
def synthetic_shapes(
    backbone: str = "tiny_point",
    seed: int = 0,
    num_points: int | None = None,
    train_size: int = 40,
    test_size: int = 20,
    noise: float = 0.01,
    augment: str = "scale_translate",
) -> TaskData:
    from peftkit.data.points.synthetic import SHAPES, make_shapes

    n = _n(backbone, num_points)
    m = int(np.ceil(n * T.FPS_RATIO))
    tr = make_shapes(train_size, m, seed=seed, noise=noise)
    te = make_shapes(test_size, m, seed=seed + 1, noise=noise)
    return task_data(CloudDataset(*tr), CloudDataset(*te), len(SHAPES), n, augment, False, SHAPES)


@register_dataset(
    "modelnet40", "ModelNet40 (modelnet40_normal_resampled text files or Point-BERT .dat cache)"
)
def modelnet40(
    backbone: str = "point_mae",
    seed: int = 0,
    root: str = "data/ModelNet/modelnet40_normal_resampled",
    num_points: int | None = None,
    num_category: int = 40,
    cache_points: int = 8192,
    augment: str = "scale_translate",
) -> TaskData:
    from peftkit.data.points.readers import read_modelnet

    tr = read_modelnet(Path(root), "train", num_category, cache_points)
    te = read_modelnet(Path(root), "test", num_category, cache_points)
    return task_data(
        CloudDataset(tr.points, tr.labels),
        CloudDataset(te.points, te.labels),
        num_category,
        _n(backbone, num_points),
        augment,
        False,
        tr.names,
        val=None,
    )


@register_dataset("scanobjectnn", "ScanObjectNN h5 (variant OBJ_BG, OBJ_ONLY or PB_T50_RS)")
def scanobjectnn(
    backbone: str = "point_mae",
    seed: int = 0,
    root: str = "data/ScanObjectNN/h5_files",
    variant: str = "PB_T50_RS",
    num_points: int | None = None,
    augment: str = "scale_translate",
) -> TaskData:
    from peftkit.data.points.readers import read_scanobjectnn

    tr = read_scanobjectnn(Path(root), variant, "train")
    te = read_scanobjectnn(Path(root), variant, "test")
    return task_data(
        CloudDataset(tr.points, tr.labels),
        CloudDataset(te.points, te.labels),
        15,
        _n(backbone, num_points),
        augment,
        False,
        tr.names,
    )


@register_dataset("shapenet55", "ShapeNet-55 (Point-BERT .npy clouds + train/test lists); label = synset")
def shapenet55(
    backbone: str = "point_mae",
    seed: int = 0,
    root: str = "data/ShapeNet55-34",
    pc_dir: str = "shapenet_pc",
    num_points: int | None = None,
    augment: str = "scale_translate",
) -> TaskData:
    from peftkit.data.points.readers import read_shapenet55

    tr = read_shapenet55(Path(root), "train", pc_dir)
    te = read_shapenet55(Path(root), "test", pc_dir, names=tr.names)
    return task_data(
        CloudDataset(tr.points, tr.labels),
        CloudDataset(te.points, te.labels),
        len(tr.names),
        _n(backbone, num_points),
        augment,
        False,
        tr.names,
    )
