"""bench.report: number formats, and the JSON / Markdown / PNG triple written atomically."""

from __future__ import annotations

import json

from peftkit.bench import report


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
