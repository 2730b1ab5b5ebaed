"""A truly read-only directory for a test: a read-only bind mount when running as root (root ignores file
modes), otherwise ``chmod a-w``; the test is skipped where neither is possible."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _chmod_tree(root: Path, writable: bool) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            p = Path(dirpath) / name
            mode = p.stat().st_mode
            bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
            p.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` (a directory) cannot be written inside the block."""
    if os.geteuid() != 0:
        _chmod_tree(path, writable=False)
        try:
            yield
        finally:
            _chmod_tree(path, writable=True)
        return
    mount = ["mount", "--bind", str(path), str(path)]
    remount = ["mount", "-o", "remount,ro,bind", str(path)]
    try:
        subprocess.run(mount, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("running as root and cannot bind-mount read-only here")
    try:
        subprocess.run(remount, check=True, capture_output=True)
        yield
    except subprocess.CalledProcessError:
        pytest.skip("running as root and cannot remount read-only here")
    finally:
        subprocess.run(["umount", str(path)], check=False, capture_output=True)
