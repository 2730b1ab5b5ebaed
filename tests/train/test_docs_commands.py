"""Every ``peftkit`` command shown in docs/training.md parses, and each ``train`` command's config and
overrides validate (the runs themselves need the packaged models; their configs are what the docs promise)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from peftkit import cli
from peftkit.train.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "training.md"
EXAMPLE = "configs/text/bbc_minilm__full.yaml"
PLACEHOLDERS = {"CONFIG": EXAMPLE, "CONFIG.yaml": EXAMPLE}


def _commands() -> list[list[str]]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "peftkit":
                out.append([PLACEHOLDERS.get(a, a) for a in argv[1:]])
    return out


def test_docs_show_commands() -> None:
    assert len(_commands()) >= 5


@pytest.mark.parametrize("argv", _commands(), ids=lambda a: " ".join(a)[:60])
def test_docs_command_is_valid(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    parser = cli.build_parser()
    args = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
    if argv[0] == "list":
        assert cli.main(argv) == 0
    if argv[0] == "train" and args.resume is None:  # (a resumed run reads RUN_DIR/config.yaml)
        cfg = load_config(args.config, args.overrides)
        for item in args.overrides:  # every override took effect
            key, value = item.split("=", 1)
            if key.startswith("method.0."):
                assert str(cfg.methods[0][key.split(".")[2]]) == value
