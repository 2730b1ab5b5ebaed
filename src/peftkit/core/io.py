"""Atomic writes: every file and directory peftkit produces appears whole or not at all.

A file is written to a temporary name beside its destination (``.NAME.tmp-PID``) and renamed over it; a
directory is filled under ``.NAME.tmp-XXXX`` and swapped in, the old one parked as ``.NAME.old-PID`` until the
new one is in place. A killed process can leave those temporary names behind; :func:`clean_orphans` removes
them (and only them) at the next start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"
_ORPHAN = re.compile(r"^\..+\.(tmp-[A-Za-z0-9_]+|old-\d+)$")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    If ``write`` or the rename fails, the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (non-finite floats are written as null)."""
    return atomic_write_text(path, json.dumps(_finite(obj), indent=indent) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_dir(final: str | os.PathLike[str]) -> Path:
    """A fresh temporary directory beside ``final``; fill it, then :func:`commit_dir` it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_MARK}", dir=final.parent))


def commit_dir(tmp: Path, final: str | os.PathLike[str]) -> None:
    """Replace ``final`` by ``tmp`` by renaming; the old directory goes only once the new one is in place."""
    final = Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}{OLD_MARK}{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_orphan(name: str) -> bool:
    """Whether ``name`` is a temporary or parked name written by the helpers above."""
    return bool(_ORPHAN.match(name))


def clean_orphans(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary / parked files and directories left in ``directory`` by a killed run.

    Only names of the form ``.NAME.tmp-*`` and ``.NAME.old-PID`` are touched; returns what was removed.
    """
    directory = Path(directory)
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        if not is_orphan(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return sorted(removed)


__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "atomic_dir",
           "commit_dir", "clean_orphans", "is_orphan", "TMP_MARK", "OLD_MARK"]
