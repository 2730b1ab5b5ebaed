"""Every ``peftkit`` command shown in a ```bash block of the README or docs/ parses with the real CLI; a
``train`` command's config and overrides validate, a ``bench`` names a registered bench (the runs themselves
need the packaged models and hours; what the docs promise is that the command is right)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from peftkit import cli
from peftkit.bench import BENCHES
from peftkit.core.errors import ConfigError
from peftkit.train.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLE = "configs/text/bbc_minilm__full.yaml"
PLACEHOLDERS = {"CONFIG": EXAMPLE, "CONFIG.yaml": EXAMPLE}


def _commands() -> list[tuple[str, list[str], bool]]:
    """(doc, argv after ``peftkit``, whether the block shows it failing with ``peftkit: error:``)."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), flags=re.S):
            fails = "peftkit: error:" in block
            for line in block.replace("\\\n", " ").splitlines():  # join continued lines
                if not line.strip().removeprefix("$ ").startswith("peftkit "):
                    continue
                argv = shlex.split(line.strip().removeprefix("$ "), comments=True)
                out.append(
                    (doc.relative_to(ROOT).as_posix(), [PLACEHOLDERS.get(a, a) for a in argv[1:]], fails)
                )
    return out


def test_docs_show_commands() -> None:
    assert len([c for c in _commands() if c[0] == "docs/training.md"]) >= 5
    assert any(fails for *_, fails in _commands())  # docs/reliability.md shows a failing command


@pytest.mark.parametrize(
    ("doc", "argv", "fails"), _commands(), ids=lambda a: " ".join(a)[:60] if isinstance(a, list) else str(a)
)
def test_docs_command_is_valid(
    doc: str, argv: list[str], fails: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    parser = cli.build_parser()
    assert argv[0] in parser.commands, f"{doc}: unknown command {argv[0]}"
    args = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
    if getattr(args, "imports", None) or any("$" in a for a in argv):
        return  # the user's own module / a shell variable is not here: the command line parsed, that is all
    if argv[0] == "list":
        assert cli.main(argv) == 0
    elif argv[0] == "bench":
        assert args.name in BENCHES, f"{doc}: no bench '{args.name}'"
    elif argv[0] == "train" and args.resume is None and Path(args.config).is_file():
        if fails:  # an example of a user error: it must fail as shown
            with pytest.raises(ConfigError):
                load_config(args.config, args.overrides)
            return
        cfg = load_config(args.config, args.overrides)
        for item in args.overrides:  # every method override took effect
            key, value = item.split("=", 1)
            if key.startswith("method.0."):
                assert str(cfg.methods[0][key.split(".")[2]]) == value
