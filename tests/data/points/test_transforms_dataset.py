"""Augmentations, FPS resampling, voting, the synthetic and KiCad datasets, and the KiCad split rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import peftkit as pk
from peftkit.core.errors import ConfigError, DataError
from peftkit.core.registry import get_dataset
from peftkit.data.points import kicad as K
from peftkit.data.points import transforms as T
from peftkit.data.points.sampling import save_cloud
from peftkit.ops.points import farthest_point_sample


def test_scale_and_translate_is_affine_per_axis() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4, 50, 3)
    q = T.scale_and_translate(p, g)
    for b in range(4):
        for ax in range(3):
            s = (q[b, 1, ax] - q[b, 0, ax]) / (p[b, 1, ax] - p[b, 0, ax])
            assert T.SCALE_LOW - 1e-4 <= s <= T.SCALE_HIGH + 1e-4
            assert torch.allclose(q[b, :, ax], p[b, :, ax] * s + (q[b, 0, ax] - p[b, 0, ax] * s), atol=1e-5)


@pytest.mark.parametrize("up", ["y", "z"])
def test_rotate_up_keeps_up_axis_and_norms(up: str) -> None:
    p = torch.rand(3, 20, 3)
    q = T.rotate_up(p, torch.Generator().manual_seed(1), up=up)
    a = {"y": 1, "z": 2}[up]
    assert torch.allclose(q[..., a], p[..., a]) and torch.allclose(q.norm(dim=-1), p.norm(dim=-1), atol=1e-6)
    assert not torch.allclose(q, p)
    with pytest.raises(DataError):
        T.rotate_up(p, up="w")


def test_jitter_is_clipped() -> None:
    p = torch.zeros(2, 1000, 3)
    q = T.jitter(p, torch.Generator().manual_seed(0), sigma=1.0, clip=0.05)
    assert q.abs().max() <= 0.05 and q.std() > 0.01


def test_resample_train_and_eval() -> None:
    p = torch.rand(2, 300, 3)
    ev = T.resample(p, 100, train=False)
    assert torch.equal(ev, torch.gather(p, 1, farthest_point_sample(p, 100)[..., None].expand(-1, -1, 3)))
    tr = T.resample(p, 100, train=True, generator=torch.Generator().manual_seed(0))
    pool = torch.gather(p, 1, farthest_point_sample(p, 120)[..., None].expand(-1, -1, 3))
    for b in range(2):  # a subset of the 1.2x FPS pool, without repeats
        rows = {tuple(r.tolist()) for r in pool[b]}
        assert (
            all(tuple(r.tolist()) in rows for r in tr[b]) and len({tuple(r.tolist()) for r in tr[b]}) == 100
        )
    ordered = p[:, :150]
    assert torch.equal(T.resample(ordered, 100, train=False, fps_ordered=True), ordered[:, :100])
    with pytest.raises(DataError, match="needed"):
        T.resample(p, 400, train=False)


def test_vote_logits_averages() -> None:
    model = pk.load_backbone("tiny_point", num_labels=3)
    pts = torch.rand(2, 128, 3)
    one = T.vote_logits(model, pts, votes=1)
    assert torch.allclose(one, model(points=pts))
    assert T.vote_logits(model, pts, votes=3, generator=torch.Generator().manual_seed(0)).shape == (2, 3)


def test_synthetic_dataset_batches_train_a_model() -> None:
    d = get_dataset("synthetic_shapes")(backbone="tiny_point", seed=0)
    assert d.pad_key is None and d.num_labels == 5 and len(d.train) == 40
    batch = d.collate([d.train[i] for i in range(8)])
    assert batch["points"].shape == (8, 128, 3) and batch["labels"].dtype == torch.long
    model = pk.load_backbone("tiny_point", num_labels=5)
    loss = torch.nn.functional.cross_entropy(model.train()(points=batch["points"]), batch["labels"])
    loss.backward()
    with pytest.raises(ConfigError, match="augment"):
        get_dataset("synthetic_shapes")(backbone="tiny_point", seed=0, augment="flip")
    bad = (np.full((200, 3), np.nan, dtype=np.float32), 0)
    with pytest.raises(DataError, match="NaN"):
        d.collate([bad])


def _fake_cache(tmp_path: Path, split: dict, per_part: int = 3) -> None:
    rng = np.random.default_rng(0)
    for part in ("train", "val", "test"):
        for lib in split["classes"][:2]:
            for name in split[part][lib][:per_part]:
                save_cloud(
                    tmp_path / "kicad" / "clouds_256" / lib / f"{name}.npz",
                    rng.normal(size=(256, 3)).astype(np.float32),
                    np.zeros(256),
                    ["x"],
                )


def test_kicad_dataset_from_a_fake_cache(tmp_path: Path) -> None:
    split = K.load_split()
    _fake_cache(tmp_path, split)
    d = get_dataset("kicad")(backbone="tiny_point", seed=0, stored_points=256, cache=str(tmp_path))
    val_names = {n for lib in split["classes"][:2] for n in split["val"][lib][:3]}
    train_names = {n for lib in split["classes"][:2] for n in split["train"][lib][:3]}
    assert not val_names & train_names or len(d.train) < 6         # val models never train
    assert len(d.val) == 6 and len(d.test) == 6 and d.val is not d.test
    assert d.num_labels == len(split["classes"])
    assert d.collate([d.train[0], d.train[len(d.train) - 1]])["labels"].tolist() == [0, 1]
    whole = get_dataset("kicad")(
        backbone="tiny_point", seed=0, stored_points=256, cache=str(tmp_path), val="none"
    )
    assert whole.val is None and len(whole.train) >= len(d.train)
    with pytest.raises(DataError, match="peftkit data kicad"):
        get_dataset("kicad")(backbone="tiny_point", seed=0, stored_points=512, cache=str(tmp_path))


def test_kicad_refuses_selection_on_test_and_too_small_clouds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        get_dataset("kicad")(backbone="tiny_point", val="test", cache=str(tmp_path))
    with pytest.raises(ConfigError, match="too small for num_points=1024"):
        get_dataset("kicad")(num_points=1024, stored_points=1024, cache=str(tmp_path))


def test_a_val_split_sharing_families_with_test_is_refused(tmp_path: Path) -> None:
    split = K.load_split()
    lib = split["classes"][0]
    split["val"][lib] = split["val"][lib] + split["test"][lib][:1]   # a test family leaks into val
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps(split))
    with pytest.raises(DataError, match="val and test splits share footprint families"):
        get_dataset("kicad")(backbone="tiny_point", split_file=str(bad), cache=str(tmp_path))


def test_carved_val_is_fixed_family_disjoint_and_about_a_fifth() -> None:
    split = K.load_split()
    assert split["val"] == K.carve_val(split)                         # the shipped val is the documented rule
    for lib in split["classes"]:
        val, train = set(split["val"][lib]), set(split["train"][lib])
        assert val < train
        assert not {K.family(n) for n in val} & {K.family(n) for n in train - val}, lib
        assert 0.1 <= len(val) / len(train) <= 0.4, lib


def test_shipped_split_is_family_disjoint() -> None:
    split = K.load_split()
    assert 10 <= len(split["classes"]) <= 15
    for lib in split["classes"]:
        tr, te = split["train"][lib], split["test"][lib]
        assert tr and te and not set(tr) & set(te)
        assert not {K.family(n) for n in tr} & {K.family(n) for n in te}, lib
    assert K.family("DIP-8_W7.62mm") == K.family("DIP-14_W7.62mm") != K.family("DIP-8_W7.62mm_Socket")


def test_make_split_rules() -> None:
    names = {
        "A": [f"X-{i}_W{i}mm" for i in range(10)]
        + [f"Y-{i}" for i in range(5)]
        + [f"Z_{i}_s" for i in range(4)]
    }
    s = K.make_split(names, classes=("A",), cap=100, test_fraction=0.25)
    assert len(s["test"]["A"]) >= 4 and not {K.family(n) for n in s["train"]["A"]} & {
        K.family(n) for n in s["test"]["A"]
    }
    assert s == K.make_split(names, classes=("A",), cap=100, test_fraction=0.25)
    with pytest.raises(DataError, match="no models"):
        K.make_split(names, classes=("B",))


def test_split_file_is_names_only() -> None:
    text = K.SPLIT_FILE.read_text()
    data = json.loads(text)
    assert set(data) >= {"classes", "train", "test"} and len(text) < 200_000


def test_kicad_example_index_in_training_batches_only(tmp_path: Path) -> None:
    split = K.load_split()
    _fake_cache(tmp_path, split)
    d = get_dataset("kicad")(
        backbone="tiny_point", seed=0, stored_points=256, cache=str(tmp_path), example_index=True
    )
    batch = d.collate([d.train[2], d.train[0]])
    assert batch["example_index"].tolist() == [2, 0]
    assert "example_index" not in d.eval_collate([d.train[2], d.train[0]])
    assert "example_index" not in d.collate([d.val[0], d.val[1]])        # val items carry no index
    model = pk.load_backbone("tiny_point", num_labels=d.num_labels)
    assert model(**{k: v for k, v in batch.items() if k != "labels"}).shape == (2, d.num_labels)
