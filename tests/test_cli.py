"""The ``peftkit`` command: success paths in-process, bad input as a real subprocess (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftkit import cli
from peftkit.core.errors import UnsupportedError

sys.path.insert(0, str(Path(__file__).parent / "train"))
import toytask  # noqa: E402  (registers toy_tokens; lives beside the training tests)

CFG = {
    "backbone": {"name": "tiny_bert"},
    "data": {"name": "toy_tokens", "n_train": 16, "n_val": 8, "n_test": 8},
    "methods": [{"name": "full"}],
    "train": {"epochs": 1, "batch_size": 8, "threads": 1},
}


def _write(tmp_path: Path, tree: dict[str, object], name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(tree))
    return p


def test_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    cfg = _write(tmp_path, {**CFG, "out_dir": str(out)})
    assert cli.main(["train", str(cfg), "train.lr=1e-3", "--no-progress"]) == 0
    assert f"peftkit: {out}: eval/accuracy=" in capsys.readouterr().out
    summary = json.loads((out / "metrics.json").read_text())
    assert cli.main(["eval", str(out), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["test/accuracy"] == summary["eval/accuracy"]
    assert json.loads((out / "eval_test.json").read_text()) == printed


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    for section in ("methods:", "backbones:", "datasets:", "benches:"):
        assert section in text
    assert "bbc_news" in text and "tiny_bert" in text and "full" in text


def test_user_errors_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["bench", "nope"]) == 2
    assert capsys.readouterr().err.startswith("peftkit: error: unknown bench 'nope'; choose one of: ")
    assert cli.main(["eval", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err == f"peftkit: error: config file {tmp_path / 'missing.yaml'} not found\n"
    cfg = _write(tmp_path, {**CFG, "out_dir": str(tmp_path / "never")})
    assert cli.main(["train", str(cfg), "method.rank=8"]) == 2
    assert "unknown key(s) ['rank'] in methods[0] for FullFineTune" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'frobnicate'" in err

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    assert cli.main(["list"]) == 130


def test_lazy_entry_points() -> None:
    with pytest.raises(UnsupportedError, match="module peftkit.no_such is missing"):
        cli._lazy("peftkit.no_such", "main", "thing")
    with pytest.raises(UnsupportedError, match="has no nope"):
        cli._lazy("peftkit.cli", "nope", "thing")


def test_bad_input_subprocess(tmp_path: Path) -> None:
    """Each case: exit code 2, exactly one line on stderr, no traceback, nothing written to out_dir."""
    out = tmp_path / "never"
    cases = {
        "unknown key": (
            _write(tmp_path, {**CFG, "out_dir": str(out), "train": {"lrr": 1}}, "a.yaml"),
            [],
            "unknown key(s) ['lrr'] in train",
        ),
        "missing data file": (
            _write(
                tmp_path,
                {
                    **CFG,
                    "out_dir": str(out),
                    "backbone": {"name": "tiny_bert"},
                    "data": {"name": "text_file", "train_file": str(tmp_path / "x.csv")},
                },
                "b.yaml",
            ),
            [],
            "data file",
        ),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, toytask.__file__, "train", str(path), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (path, extra, _) in cases.items()
    }
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        lines = stderr.splitlines()
        assert proc.returncode == 2, (name, stderr[-2000:])
        assert "Traceback" not in stderr, name
        assert len(lines) == 1 and lines[0].startswith("peftkit: error: "), (name, stderr)
        assert cases[name][2] in lines[0], (name, lines[0])
    assert not out.exists()


def test_bench_help_lists_options_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", "ops", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: peftkit bench ops [key=value ...]")
    assert "  iters=3  (int)" in out and "  out_dir='runs/bench'  (str)" in out
    assert cli.main(["bench", "--help"]) == 0
    assert "the bench (peftkit list shows them)" in capsys.readouterr().out
    assert cli.main(["bench"]) == 2
    assert capsys.readouterr().err.startswith("peftkit: error: peftkit bench needs a NAME; choose one of:")
    assert cli.main(["bench", "ops", "colour=red"]) == 2
    assert "bench ops: unknown option 'colour=red'; valid keys:" in capsys.readouterr().err
