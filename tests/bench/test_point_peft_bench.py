"""The Point-PEFT reproduction bench: options, row records, the report (mean ± sd, paired 95% CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftkit.bench import point_peft as bench
from peftkit.bench import point_peft_report as rep
from peftkit.bench.point_probe import accuracy, fit_softmax
from peftkit.core.errors import ConfigError


def test_options() -> None:
    cfg = bench.parse(["rows=full,point_peft", "seeds=0,1", "epochs=3"])
    assert cfg.rows == "full,point_peft" and cfg.epochs == 3
    with pytest.raises(ConfigError, match="unknown option"):
        bench.parse(["epochz=3"])
    with pytest.raises(ConfigError, match="unknown row"):
        bench.parse(["rows=nope"])
    args = bench.train_args(cfg, "full_rot", 1)
    assert "data.augment=scale_translate+rotate" in args and "train.eval_split=val" in args
    assert "seed=1" in args


def _fake_run(run_dir: Path, val: list[float], test: float) -> None:
    run_dir.mkdir(parents=True)
    m = {"eval/accuracy": test, "trainable_params": 110, "total_params": 1010, "trainable/head": 10,
         "trainable/point_peft": 60, "trainable/base": 40, "step_time_s": 0.5, "peak_memory_bytes": 2**20,
         "epochs": len(val), "steps": 10}
    (run_dir / "metrics.json").write_text(json.dumps(m))
    lines = [{"step": i, "epoch": i, "val/accuracy": v} for i, v in enumerate(val)]
    lines.append({"step": 9, "loss": 1.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_records_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tests = {"full": [0.50, 0.60, 0.55], "point_peft": [0.55, 0.62, 0.60]}
    for row, accs in tests.items():
        for seed, acc in enumerate(accs):
            run = tmp_path / "runs" / f"{row}__s{seed}"
            _fake_run(run, [0.3, 0.4, acc], acc)
            rec = bench.record_from_run(run, row, seed, ["x.yaml"])
            assert rec["val_curve"] == [0.3, 0.4, acc] and rec["test"] == acc
            assert rec["trainable_by_owner"] == {"head": 10, "point_peft": 60, "base": 40}
            path = bench.row_path(out, row, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec))
    rot = tmp_path / "runs" / "full_rot__s0"
    _fake_run(rot, [0.2, 0.3], 0.99)
    assert bench.record_from_run(rot, "full_rot", 0, [])["test"] is None       # validated only: never test
    paths = rep.report(out, {"epochs": 3}, ["seeds=0,1,2"])
    data = json.loads(paths["json"].read_text())
    d = data["diffs"]["Point-PEFT - full FT, test"]
    assert d["diffs"] == pytest.approx([0.05, 0.02, 0.05])
    # mean 0.04, sd 0.01732, half-width 4.303 * 0.01732 / sqrt(3) = 0.04303
    assert d["mean"] == pytest.approx(0.04)
    assert d["ci"] == pytest.approx([0.04 - 0.04303, 0.04 + 0.04303], abs=1e-4)
    full = next(r for r in data["rows"] if r["row"] == "full")
    assert full["test"] == pytest.approx([0.55, 0.05]) and full["trainable_body"] == 100
    assert full["body_pct"] == pytest.approx(100 * 100 / 1000)
    md = paths["md"].read_text()
    assert "55.0 ± 5.0" in md and "+4.0 points" in md and paths["png"].stat().st_size > 5000


def test_one_seed_has_no_interval() -> None:
    recs = [{"row": "a", "seed": 0, "test": 0.5}, {"row": "b", "seed": 0, "test": 0.4}]
    d = rep.paired(recs, "a", "b")
    assert d["mean"] == pytest.approx(0.1) and d["ci"] is None
    assert rep.paired(recs, "a", "c") is None


def test_softmax_probe_separates_separable_data() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 5
    y = torch.arange(60) % 3
    x = centers[y] + torch.randn(60, 8, generator=g) * 0.1
    assert accuracy(fit_softmax(x[:45], y[:45], 3, 1e-3), x[45:], y[45:]) == 1.0
    shuffled = y[torch.randperm(60, generator=g)]
    assert accuracy(fit_softmax(x[:45], shuffled[:45], 3, 1e-3), x[45:], shuffled[45:]) < 0.9


def test_cost_profile_parts_add_up() -> None:
    """The profile's forward parts are positive and fit inside the measured forward and step."""
    import peftkit as pk
    from peftkit.bench.point_peft_cost import profile
    from peftkit.methods.point_peft.config import PointPEFT

    base = pk.load_backbone("tiny_point", num_labels=3)
    model = pk.apply(base, [PointPEFT(use_bank=False, prompt_layers=1)])
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.rand(2, 128, 3), torch.tensor([0, 2])

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    prof = profile(model, step, rounds=2)
    parts = ["grouping (FPS + kNN)", "attention", "MLP (+ parallel adapter)", "GA local attention"]
    parts.append("GA token adapter")
    assert all(prof[p] > 0 for p in parts)
    assert sum(prof[p] for p in parts) < prof["forward (total)"] < prof["step (total)"]
    assert prof["backward + optimiser step"] > 0


def test_difference_against_a_deterministic_row() -> None:
    recs = [{"row": "a", "seed": s, "test": v} for s, v in enumerate([0.5, 0.6, 0.7])]
    recs.append({"row": "probe", "seed": 0, "test": 0.55})
    d = rep.paired(recs, "a", "probe", b_constant=True)
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(0.05)
    assert d["ci"] == pytest.approx([0.05 - 4.303 * 0.1 / 3**0.5, 0.05 + 4.303 * 0.1 / 3**0.5], abs=1e-4)
    assert rep.paired(recs, "a", "probe")["seeds"] == [0]              # without it: seed 0 only


def test_a_winner_row_reuses_its_selection_runs() -> None:
    """A test-reading row named in RUN_OF trains exactly as its val-only selection row, in the same run
    directory (its seed-0 run is the selection run, whose test split is then read once)."""
    cfg = bench.parse(["seeds=0"])
    assert bench.RUN_OF
    for row, sel in bench.RUN_OF.items():
        assert bench.ROWS[row][1:3] == bench.ROWS[sel][1:3]
        assert bench.ROWS[row][3] and not bench.ROWS[sel][3]
        assert "train.eval_split=val" in bench.ROWS[row][2]
        for seed in (0, 2):
            assert bench.train_args(cfg, row, seed) == bench.train_args(cfg, sel, seed)
