"""speed (round-robin timing, ratios) and report (formats, atomic JSON/MD/PNG)."""

from __future__ import annotations

import json
import time

import pytest

import peftkit as pk
from peftkit.bench import report, speed


def test_interleaved_rotates_order_and_counts_calls():
    calls: list[str] = []
    naps = {"a": 0.0, "b": 0.004, "c": 0.0}   # b sleeps 4 ms per call: its times must show it

    def step(n: str) -> None:
        calls.append(n)
        time.sleep(naps[n])

    times = speed.interleaved_times({n: (lambda n=n: step(n)) for n in "abc"}, warmup=1, rounds=3)
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")   # warm-up, then rotated rounds
    assert all(0.004 <= t < 1.0 for t in times["b"])
    assert all(0.0 < t < 0.5 for n in "ac" for t in times[n])


def test_medians_ratios_and_bad_input():
    med = speed.medians({"full": [3.0, 1.0, 2.0], "lora": [1.0, 0.5, 9.0, 0.7]})
    assert med == {"full": 2.0, "lora": 0.85}
    assert speed.ratios(med, "full") == {"full": 1.0, "lora": 0.425}
    with pytest.raises(pk.ConfigError, match="reference 'x'"):
        speed.ratios(med, "x")
    with pytest.raises(pk.ConfigError):
        speed.interleaved_times({"a": lambda: None}, rounds=0)
    n = []
    t = speed.median_step_time(lambda: (n.append(1), time.sleep(0.003)), warmup=2, iters=3)
    assert 0.003 <= t < 1.0 and len(n) == 5


def test_formats():
    assert report.fmt_int(22713216) == "22,713,216"
    assert report.fmt_mib(3 * 2**20) == "3.0 MiB" and report.fmt_mib(2**19) == "0.50 MiB"
    assert report.fmt_pct(12.345) == "12.35%" and report.fmt_frac_pct(0.9123) == "91.2%"
    assert report.fmt_ratio(0.523) == "0.52x"
    assert report.fmt_int(None) == report.fmt_mib(float("nan")) == report.MISSING


def test_write_report_writes_three_files(tmp_path):
    rows = [{"label": "full", "acc": 0.9, "mem": 2**21}, {"label": "lora", "acc": 0.8}]
    cols = [report.Column("label", "method"), report.Column("acc", "accuracy", report.fmt_frac_pct),
            report.Column("mem", "memory", report.fmt_mib)]
    fig = report.bar_panels(rows, "label", [report.Panel("acc", "accuracy"), report.Panel("mem", "MiB")])
    paths = report.write_report(tmp_path, "t", rows=rows, columns=cols, title="T", notes=["scale: tiny"],
                                meta={"seed": 0}, figure=fig)
    data = json.loads(paths["json"].read_text())
    assert data["rows"] == rows and data["seed"] == 0 and data["notes"] == ["scale: tiny"]
    md = paths["md"].read_text()
    assert "| full | 90.0% | 2.0 MiB |" in md and f"| lora | 80.0% | {report.MISSING} |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.md", "t.png"]   # no temp files left
    text = report.text_table(rows, cols).splitlines()
    assert len(text) == 4 and len({len(line) for line in text}) == 1
