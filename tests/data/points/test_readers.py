"""ModelNet40 (text + Point-BERT .dat), ScanObjectNN (h5) and ShapeNet-55 (npy) readers on files written here
in those exact on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from peftkit.core.errors import DataError
from peftkit.core.registry import get_dataset
from peftkit.data.points.readers import read_modelnet, read_scanobjectnn, read_shapenet55


def write_modelnet(root: Path, n: int = 40) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("airplane\nbathtub\nnight_stand\n")
    (root / "modelnet40_train.txt").write_text("airplane_0001\nnight_stand_0002\n")
    (root / "modelnet40_test.txt").write_text("bathtub_0107\n")
    rng = np.random.default_rng(0)
    for sid in ("airplane_0001", "night_stand_0002", "bathtub_0107"):
        cls = sid.rsplit("_", 1)[0]
        (root / cls).mkdir(exist_ok=True)
        rows = np.concatenate([rng.normal(size=(n, 3)) * 4 + 2, rng.normal(size=(n, 3))], 1)  # xyz + normals
        np.savetxt(root / cls / f"{sid}.txt", rows, delimiter=",", fmt="%.6f")


def test_modelnet_text(tmp_path: Path) -> None:
    write_modelnet(tmp_path)
    tr = read_modelnet(tmp_path, "train")
    assert tr.labels.tolist() == [0, 2] and tr.names[2] == "night_stand"
    assert tr.points[0].shape == (40, 3) and np.isclose(np.linalg.norm(tr.points[0], axis=1).max(), 1)
    assert np.allclose(tr.points[1].mean(0), 0, atol=1e-5)
    assert read_modelnet(tmp_path, "test").labels.tolist() == [1]


def test_modelnet_dat_cache(tmp_path: Path) -> None:
    write_modelnet(tmp_path)
    pts = [np.random.default_rng(i).normal(size=(64, 6)).astype(np.float32) for i in range(3)]
    labels = [np.array([2], dtype=np.int32), np.array([0], dtype=np.int32), np.array([1], dtype=np.int32)]
    with open(tmp_path / "modelnet40_train_64pts_fps.dat", "wb") as f:
        pickle.dump([pts, labels], f)
    c = read_modelnet(tmp_path, "train", cache_points=64)
    assert c.labels.tolist() == [2, 0, 1] and c.points[0].shape == (64, 3)


def test_modelnet_dat_refuses_code(tmp_path: Path) -> None:
    write_modelnet(tmp_path)
    with open(tmp_path / "modelnet40_train_64pts_fps.dat", "wb") as f:
        pickle.dump([[Path("x")], [1]], f)
    with pytest.raises(DataError, match="refusing"):
        read_modelnet(tmp_path, "train", cache_points=64)


def test_modelnet_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_modelnet(tmp_path, "train")
    write_modelnet(tmp_path)
    (tmp_path / "airplane" / "airplane_0001.txt").write_text("1,2\n3,4\n")
    with pytest.raises(DataError, match="airplane_0001"):
        read_modelnet(tmp_path, "train")
    (tmp_path / "airplane" / "airplane_0001.txt").write_text("nan,1,1,0,0,1\n1,1,1,0,0,1\n")
    with pytest.raises(DataError, match="NaN"):
        read_modelnet(tmp_path, "train")


def write_scanobjectnn(root: Path) -> None:
    rng = np.random.default_rng(0)
    for folder, stem in (
        ("main_split", "objectdataset_augmentedrot_scale75"),
        ("main_split_nobg", "objectdataset"),
        ("main_split", "objectdataset"),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for split, c in (("training", 6), ("test", 3)):
            with h5py.File(root / folder / f"{split}_{stem}.h5", "w") as h:
                h["data"] = rng.normal(size=(c, 2048, 3)).astype(np.float32)
                h["label"] = np.arange(c, dtype=np.int64) % 15
                h["mask"] = np.zeros((c, 2048), dtype=np.int32)


@pytest.mark.parametrize("variant", ["PB_T50_RS", "OBJ_ONLY", "OBJ_BG"])
def test_scanobjectnn(tmp_path: Path, variant: str) -> None:
    write_scanobjectnn(tmp_path)
    tr = read_scanobjectnn(tmp_path, variant, "train")
    assert len(tr.points) == 6 and tr.points[0].shape == (2048, 3) and tr.labels.tolist() == list(range(6))
    with h5py.File(tmp_path / "main_split" / "training_objectdataset.h5", "r") as h:
        if variant == "OBJ_BG":
            assert np.array_equal(tr.points[1], h["data"][1])  # used as stored, not renormalised


def test_scanobjectnn_bad(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="variant"):
        read_scanobjectnn(tmp_path, "HARDEST", "train")
    with pytest.raises(DataError, match="not found"):
        read_scanobjectnn(tmp_path, "OBJ_BG", "train")
    (tmp_path / "main_split").mkdir()
    with h5py.File(tmp_path / "main_split" / "training_objectdataset.h5", "w") as h:
        h["points"] = np.zeros((2, 3))
    with pytest.raises(DataError, match="'data' and 'label'"):
        read_scanobjectnn(tmp_path, "OBJ_BG", "train")


def write_shapenet(root: Path) -> None:
    (root / "ShapeNet-55").mkdir(parents=True)
    (root / "shapenet_pc").mkdir()
    names = {
        "train": ["02691156-aaa.npy", "04379243-bbb.npy", "02691156-ccc.npy"],
        "test": ["04379243-ddd.npy"],
    }
    for split, files in names.items():
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(files) + "\n")
        for i, f in enumerate(files):
            np.save(
                root / "shapenet_pc" / f, np.random.default_rng(i).normal(size=(8192, 3)).astype(np.float32)
            )


def test_shapenet55(tmp_path: Path) -> None:
    write_shapenet(tmp_path)
    tr = read_shapenet55(tmp_path, "train")
    assert tr.names == ["02691156", "04379243"] and tr.labels.tolist() == [0, 1, 0]
    te = read_shapenet55(tmp_path, "test", names=tr.names)
    assert te.labels.tolist() == [1] and te.points[0].shape == (8192, 3)


def test_registered_builders_on_written_files(tmp_path: Path) -> None:
    write_modelnet(tmp_path / "mn", n=300)
    d = get_dataset("modelnet40")(backbone="tiny_point", seed=0, root=str(tmp_path / "mn"))
    b = d.collate([d.train[0], d.train[1]])
    assert b["points"].shape == (2, 128, 3) and b["labels"].tolist() == [0, 2] and d.pad_key is None
    write_scanobjectnn(tmp_path / "so")
    d = get_dataset("scanobjectnn")(
        backbone="tiny_point", seed=0, root=str(tmp_path / "so"), variant="OBJ_ONLY", num_points=256
    )
    assert d.eval_collate([d.test[0]])["points"].shape == (1, 256, 3) and d.num_labels == 15
    write_shapenet(tmp_path / "sn")
    d = get_dataset("shapenet55")(backbone="tiny_point", seed=0, root=str(tmp_path / "sn"))
    assert d.num_labels == 2 and len(d.test) == 1
