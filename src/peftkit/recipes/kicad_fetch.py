"""``peftkit data kicad [points=2048] [cache=DIR] [write_split=true]``: fetch and sample the KiCad benchmark.

Downloads ``kicad-packages3d`` with ``apt-get download`` (no root), extracts the ``.wrl`` files of the 12
benchmark libraries and samples every model of the shipped split into ``cache/kicad/clouds_<points>``
(see :mod:`peftkit.data.points.kicad`). Options are validated before anything is downloaded or written.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.core.errors import ConfigError
from peftkit.core.io import atomic_write_text
from peftkit.data.points import kicad
from peftkit.data.points.sampling import cache_root

OPTIONS = ("points", "cache", "write_split")
MIN_POINTS = 32  # below this no grouping of the registered backbones fits
MAX_POINTS = 1 << 20


def parse_options(overrides: list[str] | None) -> tuple[int, Path, bool]:
    """``key=value`` items -> ``(points, cache, write_split)``; ConfigError (one line) for a bad item."""
    opts = {"points": str(kicad.DEFAULT_POINTS), "cache": str(cache_root()), "write_split": "false"}
    for item in overrides or []:
        key, sep, val = item.partition("=")
        if not sep or key not in opts:
            raise ConfigError(
                f"unknown option '{item}' for 'peftkit data kicad'; options: {', '.join(OPTIONS)}"
            )
        opts[key] = val
    try:
        points = int(opts["points"])
    except ValueError:
        raise ConfigError(f"points must be a whole number such as 2048, got '{opts['points']}'") from None
    if not MIN_POINTS <= points <= MAX_POINTS:
        raise ConfigError(f"points must be between {MIN_POINTS} and {MAX_POINTS}, got {points}")
    flag = opts["write_split"].lower()
    if flag not in ("1", "true", "yes", "0", "false", "no"):
        raise ConfigError(f"write_split must be true or false, got '{opts['write_split']}'")
    if not opts["cache"].strip():
        raise ConfigError("cache must be a directory path, got an empty string")
    return points, Path(opts["cache"]).expanduser(), flag in ("1", "true", "yes")


def main(overrides: list[str] | None = None) -> int:
    """Entry point of ``peftkit data kicad``; returns the exit code."""
    points, cache, write_split = parse_options(overrides)
    if write_split:
        deb = kicad.fetch_deb(cache)
        split = kicad.make_split(kicad.list_deb_models(deb))
        split["source"] = deb.name
        split["family_rule"] = "model name with every number replaced by '#'"
        atomic_write_text(kicad.SPLIT_FILE, json.dumps(split, indent=1) + "\n")
        print(f"wrote {kicad.SPLIT_FILE}")
    report = kicad.prepare(kicad.load_split(), cache, points)
    print(
        f"kicad: {report['prepared']} models ready in {kicad.clouds_dir(cache, points)}, "
        f"{report['skipped']} skipped (see prepare_log.json)"
    )
    for line in report["skipped_files"][:20]:
        print(f"  skipped {line}")
    return 0
