"""A run directory's life: refuse what is not ours, lock it, clean orphans, then start or resume it.

The order is the promise. :func:`check_out_dir` only reads (and probes writability with a file it removes at
once); the loop calls it after the config, the data, the backbone, the method stack and one forward have been
built and checked, so any bad input fails with ``out_dir`` untouched. Only then does :class:`RunLock` take
``OUT_DIR/.peftkit.lock`` (an exclusive ``fcntl.flock`` held for the run's life; the holder's PID is written
in it while held), orphans of a killed run are removed, and :func:`start_run_dir` replaces the files an
earlier run wrote there, and nothing else.

A directory counts as a peftkit run when its ``config.yaml`` is a YAML mapping with a ``backbone`` key and
only run-config keys. Any other non-empty directory is refused unless ``overwrite`` is set (``--overwrite``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

import yaml

from peftkit.core.errors import ConfigError
from peftkit.core.io import atomic_write_text, clean_orphans, is_orphan

LOCK_NAME = ".peftkit.lock"
RUN_FILES = ("config.yaml", "metrics.json", "metrics.jsonl", "metrics.png", "adapter", "checkpoints", "tb")
RUN_KEYS = ("out_dir", "seed", "backbone", "data", "methods", "train")


def is_run_dir(out: Path) -> bool:
    """Whether ``out`` holds a peftkit run (its ``config.yaml`` reads as a run config)."""
    cfg = out / "config.yaml"
    if not cfg.is_file():
        return False
    try:
        tree = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(tree, dict) and "backbone" in tree and set(tree) <= set(RUN_KEYS)


def _user_entries(out: Path) -> list[str]:
    """Names in ``out`` besides the lock file and orphans of a killed run."""
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME and not is_orphan(p.name))


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(directory: Path, what: str) -> None:
    """Raise ConfigError when ``directory`` (or, if absent, its nearest existing parent) cannot be written.

    The probe creates and removes one temporary file, so a read-only file system is caught even for root.
    """
    base = _nearest_existing(directory)
    if not base.is_dir():
        raise ConfigError(f"{what} {directory}: {base} is a file, not a directory; choose another path")
    probe = base / f".peftkit-probe.tmp-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        reason = "read-only file system" if e.errno == errno.EROFS else (e.strerror or str(e)).lower()
        raise ConfigError(
            f"{what} {directory} is not writable ({reason} at {base}); choose a writable path"
        ) from None
    os.close(fd)
    probe.unlink()


def check_out_dir(out_dir: str, overwrite: bool = False, resume: bool = False) -> Path:
    """Validate ``out_dir`` before anything is created or cleared there; returns it as a Path.

    Raises:
        ConfigError: ``out_dir`` is empty, a file, not writable, or a non-empty directory that is not a
            peftkit run (unless ``overwrite``); for ``resume``, not a run directory.
    """
    if not str(out_dir).strip():
        raise ConfigError("out_dir is empty; give the run its own directory, e.g. out_dir=runs/my_run")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is an existing file, not a directory; choose another out_dir")
    if resume:
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"--resume {out}: not a run directory (no config.yaml)")
    elif out.is_dir() and _user_entries(out) and not is_run_dir(out) and not overwrite:
        found = _user_entries(out)
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise ConfigError(
            f"out_dir {out} is not empty and is not a peftkit run (it holds {shown}); choose a new out_dir, "
            f"or pass --overwrite to write the run there (only {', '.join(RUN_FILES)} are replaced)"
        )
    check_writable(out, "out_dir")
    return out


class RunLock:
    """An exclusive lock on a run directory for the run's life (``with RunLock(out): ...``).

    A second process that tries to lock the same directory gets a ConfigError naming the holder's PID.
    The lock file stays (empty when free), so locking never changes a directory's content for good.
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is in use by another peftkit run (PID {holder}); wait for it to "
                "finish or choose another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # a read-only or full file system: the kernel still drops the lock at close
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def clean_run_orphans(out: Path) -> list[str]:
    """Remove ``.*.tmp-*`` / ``.*.old-PID`` a killed run left in ``out``, ``adapter/``, ``checkpoints/``."""
    removed = []
    for d in (out, out / "checkpoints", out / "adapter"):
        removed += [f"{d.name}/{n}" for n in clean_orphans(d)]
    return removed


def clean_run_dir(out: Path) -> list[str]:
    """Remove the files of an earlier run in ``out`` (only peftkit's own names); returns what was removed."""
    removed = []
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def start_run_dir(out: Path, config_text: str) -> None:
    """Replace an earlier run's files in ``out`` (created if needed); write the resolved ``config.yaml``."""
    out.mkdir(parents=True, exist_ok=True)
    removed = clean_run_dir(out)
    if removed:
        print(f"peftkit: replacing the earlier run in {out} ({', '.join(removed)})")
    atomic_write_text(out / "config.yaml", config_text)
