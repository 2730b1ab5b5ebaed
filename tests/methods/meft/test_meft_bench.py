"""The MEFT benchmarks' bookkeeping (``bench memory``, ``bench meft_accuracy``): what is measured where, how
rows are combined, bad overrides. The measurements themselves are exercised by the benchmark runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

import peftkit as pk
from peftkit.bench import meft_accuracy as acc
from peftkit.bench import memory_sweep as mem
from peftkit.bench.meft_decoder import run_part


def test_sweep_points_cover_the_cross_and_the_target() -> None:
    cfg = mem.SweepConfig()
    pts = mem.points(cfg)
    cells = {(a, d, t, m) for a, d, t, m, _ in pts}
    assert len(cells) == len(pts)                                  # nothing measured twice
    for arch in ("bert_base", "minilm"):
        for label in mem.GRID_METHODS:                             # every method at 12 layers, both lengths
            assert {(arch, 12, 128, label), (arch, 12, 512, label)} <= cells
        for d in (6, 24):                                          # the depth arm at the shortest length
            assert all((arch, d, 128, m) in cells for m in mem.DEPTH_ARM)
    peaks = {(a, d, t, m) for a, d, t, m, p in pts if p}
    assert {("bert_base", 12, 512, m) for m in mem.GRID_METHODS} <= peaks
    assert {("bert_base", d, 512, m) for d in (6, 24) for m in mem.PEAK_DEPTH_ARM} <= peaks
    assert all(a == "bert_base" and t == 512 for a, _, t, _ in peaks)
    assert not any(p for *_, p in mem.points(mem.parse(["peak=false"])))


def test_saved_table_ratios() -> None:
    cfg = mem.parse(["archs=minilm", "depths=6,12", "lengths=128", "target=minilm,12,128"])
    rows = [{"arch": "minilm", "depth": d, "length": 128, "method": m, "saved_bytes": b}
            for m, d, b in [("full FT", 6, 100), ("full FT", 12, 200), ("MEFT1", 6, 10), ("MEFT1", 12, 10)]]
    table = {r["method"]: r for r in mem.saved_table(cfg, rows)}
    assert table["MEFT1"]["ratio_target"] == pytest.approx(0.05)
    assert table["MEFT1"]["depth_growth"] == pytest.approx(1.0)
    assert table["full FT"]["depth_growth"] == pytest.approx(2.0)


def test_peak_table_is_relative_to_full_ft_at_the_same_depth() -> None:
    rows = [{"method": "full FT", "depth": 12, "peak_bytes": 1000, "transient_bytes": 400},
            {"method": "MEFT1", "depth": 12, "peak_bytes": 100, "transient_bytes": 40},
            {"method": "MEFT1", "depth": 24, "peak_bytes": 110, "transient_bytes": 45},
            {"method": "LoRA r=8", "depth": 12, "saved_bytes": 5}]   # no peak: left out
    out = mem.peak_table(rows)
    assert [r["method"] for r in out] == ["full FT", "MEFT1", "MEFT1"]
    assert out[1]["peak_vs_full"] == pytest.approx(0.1) and out[1]["transient_vs_full"] == pytest.approx(0.1)
    assert out[2]["peak_vs_full"] is None


def test_accuracy_selection_on_validation_and_summary() -> None:
    sweep = [{"label": "MEFT1", "lr": lr, "eval/accuracy": a} for lr, a in [(1e-3, 0.8), (3e-3, 0.9)]]
    sweep += [{"label": "LoRA r=8", "lr": lr, "eval/accuracy": 0.7} for lr in (3e-3, 1e-3)]  # tie: smaller
    chosen = acc.select(sweep)
    assert chosen == {"MEFT1": 3e-3, "LoRA r=8": 1e-3}
    final = [{"label": "MEFT1", "lr": 3e-3, "eval/accuracy": a, "trainable_params": 7} for a in (0.8, 0.9)]
    rows = {r["label"]: r for r in acc.summarise(final, sweep, chosen)}
    assert rows["MEFT1"]["eval/accuracy"] == pytest.approx(0.85)
    assert rows["MEFT1"]["eval/accuracy_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert rows["MEFT1"]["seeds"] == 2 and rows["MEFT1"]["sweep"] == {"0.001": 0.8, "0.003": 0.9}
    assert rows["LoRA r=8"]["seeds"] == 0 and "eval/accuracy" not in rows["LoRA r=8"]


def test_accuracy_paired_differences_against_lora_and_full_ft() -> None:
    final = [{"label": lab, "seed": s, "eval/accuracy": a, "val_curve": [0.1, v]}
             for lab, s, a, v in [("LoRA r=8", 0, 0.90, 0.80), ("LoRA r=8", 1, 0.92, 0.82),
                                  ("LoRA r=8", 2, 0.94, 0.84), ("MEFT3", 0, 0.89, 0.81),
                                  ("MEFT3", 1, 0.90, 0.83), ("MEFT3", 2, 0.91, 0.85),
                                  ("MEFT3", 3, 0.99, 0.99)]]          # seed 3 has no LoRA pair: left out
    chosen = {"LoRA r=8": 1e-3, "MEFT3": 1e-3}
    rows = {r["label"]: r for r in acc.summarise(final, [], chosen)}
    assert rows["MEFT3"]["val_last"] == pytest.approx((0.81 + 0.83 + 0.85 + 0.99) / 4)
    (p,) = acc.paired_rows(final)                                   # no full FT rows: only against LoRA
    assert (p["label"], p["reference"]) == ("MEFT3", "LoRA r=8")
    assert p["test"]["seeds"] == [0, 1, 2]
    assert p["test"]["diffs"] == pytest.approx([-0.01, -0.02, -0.03])
    assert p["test"]["mean"] == pytest.approx(-0.02)
    half = 4.303 * 0.01 / 3 ** 0.5                                  # t_{0.975, 2} sd / sqrt(n)
    assert p["test"]["ci"] == pytest.approx([-0.02 - half, -0.02 + half])
    assert p["val"]["mean"] == pytest.approx(0.01) and p["val"]["sd"] == pytest.approx(0.0, abs=1e-12)


def test_accuracy_run_configs_share_the_schedule_and_sweep_reads_no_test() -> None:
    cfg = acc.AccuracyConfig(max_train_examples=64, max_length=64)
    a, b = acc.run_config(cfg, "MEFT2", 1e-3, 1, "val"), acc.run_config(cfg, "full FT", 5e-5, 1, "test")
    assert a.data == b.data and a.train.epochs == b.train.epochs and a.train.batch_size == b.train.batch_size
    assert a.method_configs() == [pk.MEFT(variant="meft2")]
    assert a.train.lr == 1e-3 and b.train.lr == 5e-5
    assert a.train.eval_split == "val" and b.train.eval_split == "test"
    assert acc.run_key("sweep", "LoRA r=8", 1e-3, 0) == "sweep__lora_r_8__lr0.001__s0"


def test_accuracy_stored_rows_are_reused(tmp_path: Any) -> None:
    cfg = acc.AccuracyConfig(rows_dir=str(tmp_path), rows="MEFT1", seeds="0")
    for phase, lr, a in [("sweep", 1e-3, 0.5), ("sweep", 3e-3, 0.7), ("final", 3e-3, 0.8)]:
        row = {"phase": phase, "label": "MEFT1", "lr": lr, "seed": 0, "scale": acc.scale(cfg),
               "eval/accuracy": a}
        (tmp_path / f"{acc.run_key(phase, 'MEFT1', lr, 0)}.json").write_text(json.dumps(row))
    sweep, chosen, final = acc.train_rows(cfg)  # everything stored: nothing is trained
    assert chosen == {"MEFT1": 3e-3} and [r["eval/accuracy"] for r in final] == [0.8]
    other = acc.AccuracyConfig(rows_dir=str(tmp_path), rows="MEFT1", seeds="0", epochs=9)
    assert acc.train_rows(other, run_missing=False) == ([], {}, [])  # another scale: not mixed in


def test_accuracy_lr_grid_replaces_every_rows_grid() -> None:
    assert acc.grid(acc.parse([]), "MEFT3") == acc.GRIDS["MEFT3"][1]
    assert acc.grid(acc.parse(["lr_grid=1.5e-4"]), "full FT") == (1.5e-4,)
    for bad in (["lr_grid=fast"], ["lr_grid=0,1e-3"]):
        with pytest.raises(pk.ConfigError, match="lr_grid"):
            acc.parse(bad)


def test_accuracy_backbone_option_names_the_backbone_and_keys_the_rows() -> None:
    other = acc.AccuracyConfig(backbone="tiny_bert")
    assert acc.run_config(other, "LoRA r=8", 1e-3, 0, "val").backbone.name == "tiny_bert"
    assert acc.scale(other)["backbone"] == "tiny_bert"  # rows of another backbone are never mixed in
    assert "backbone" not in acc.scale(acc.AccuracyConfig())  # MiniLM's stored rows keep their key


@pytest.mark.parametrize("bad", [["nope=1"], ["depths"], ["batch_size=x"],
                                 ["tradeoff_stream_dtypes=auto,bf16"]])
def test_sweep_bad_overrides(bad: list[str]) -> None:
    with pytest.raises(pk.ConfigError):
        mem.parse(bad)


@pytest.mark.parametrize("bad", [["part=everything"], ["seedz=1"]])
def test_accuracy_bad_overrides(bad: list[str]) -> None:
    with pytest.raises(pk.ConfigError):
        acc.parse(bad)


def test_accuracy_unknown_row() -> None:
    with pytest.raises(pk.ConfigError, match="unknown row"):
        acc.train_rows(acc.AccuracyConfig(rows="MEFT9"))


def test_accuracy_remedy_rows_sweep_only(tmp_path: Any) -> None:
    """A remedy row is a MEFT3 stack with one changed field; ``seeds=`` (empty) runs the validation sweep
    only, so the test split is never read for it."""
    label = "MEFT3, init std 0.1"
    cfg = acc.AccuracyConfig(rows_dir=str(tmp_path), rows=f"{label};MEFT3", seeds="")
    assert acc.run_config(cfg, label, 3e-3, 0, "val").method_configs() == [
        pk.MEFT(variant="meft3", adapter_init_std=0.1)]
    for lab, lr in [(label, 3e-3), ("MEFT3", 1e-3), ("MEFT3", 3e-3)]:
        row = {"phase": "sweep", "label": lab, "lr": lr, "seed": 0, "scale": acc.scale(cfg),
               "eval/accuracy": lr}
        (tmp_path / f"{acc.run_key('sweep', lab, lr, 0)}.json").write_text(json.dumps(row))
    sweep, chosen, final = acc.train_rows(cfg)
    assert len(sweep) == 3 and chosen == {label: 3e-3, "MEFT3": 3e-3} and final == []
    assert "MEFT3, init std 0.1" not in acc._labels(acc.AccuracyConfig())  # rows=all: the main table only


def test_val_curve_reads_each_epoch(tmp_path: Any) -> None:
    path = tmp_path / "metrics.jsonl"
    recs = [{"step": 5, "loss": 1.0}, {"step": 10, "val/accuracy": 0.5}, {"step": 20, "val/accuracy": 0.75},
            {"step": 20, "eval/accuracy": 0.7}]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert acc.val_curve(path) == [0.5, 0.75]
    assert acc.val_curve(tmp_path / "missing.jsonl") == []


def test_depth_tradeoff_anchors_cost_memory_and_buy_exact_gradients(tmp_path: Any) -> None:
    """MEFT3 on a 12-layer random BERT (d 128): without anchors the reversible gradients are wrong (the
    inverse divides by 0.1 twice per layer); with the default tolerance they are within 1e-3, and the
    anchors the calibration keeps raise the step peak."""
    import torch

    from peftkit.bench.memory_depth import tradeoff_rows

    torch.set_num_threads(1)
    rows = tradeoff_rows(str(tmp_path), "d128", [12], 32, 2, ["meft3"], [1e-3, 0])
    by = {r["tolerance"]: r for r in rows}
    assert by[1e-3]["grad_rel_err"] < 1e-3 and not by[0]["grad_rel_err"] < 1e-3
    assert by[1e-3]["anchors"] and by[0]["anchors"] == []
    assert by[1e-3]["peak_bytes"] > by[0]["peak_bytes"]
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_decoder_part_rejects_an_unknown_method(tmp_path: Any) -> None:
    cfg = acc.parse(["part=decoder", "decoder_methods=meft1,nope", f"rows_dir={tmp_path}"])
    with pytest.raises(pk.ConfigError, match="decoder_methods"):
        run_part(cfg)
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_decoder_memory_report_is_relative_to_lora_at_the_same_length(tmp_path: Any) -> None:
    from peftkit.bench import meft_report

    cfg = mem.parse([f"out_dir={tmp_path}", "decoder=true"])
    rows = [{"length": t, "method": m, "peak_bytes": b, "losses": [2.0, 1.0], "anchors": a,
             "reconstruction_worst": e}
            for t, m, b, a, e in [(512, "LoRA r=8", 400, None, None), (512, "MEFT1", 100, [0, 1], 1e-4),
                                  (1024, "LoRA r=8", 800, None, None), (1024, "MEFT1", 400, [0], 2e-4)]]
    md = meft_report.write_decoder_memory(cfg, rows, "cmd").read_text()
    assert [r["vs_lora"] for r in rows] == pytest.approx([1.0, 0.25, 1.0, 0.5])
    assert "0.25" in md and "2.00 → 1.00" in md


def test_calibration_diagnosis_refuses_bad_options_before_any_work() -> None:
    from peftkit.bench import meft_calibration_diag as diag

    with pytest.raises(pk.ConfigError, match="lr must be > 0"):
        diag.main(["lr=0"])
    with pytest.raises(pk.ConfigError):
        diag.main(["rate=1"])
