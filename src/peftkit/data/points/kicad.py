"""KiCad 3D models (Debian ``kicad-packages3d``) as a labelled point-cloud benchmark: fetch and prepare.

``peftkit data kicad`` downloads the .deb with ``apt-get download`` into the cache (no root, no install),
extracts only the ``.wrl`` files of the benchmark libraries (``dpkg-deb --fsys-tarfile`` streamed into
Python's ``tarfile``; no shell), reads each VRML model, samples ``points`` points area-weighted,
normalises to the unit sphere, stores them in farthest-point order as ``.npz`` with per-point material
ids (part labels), and logs every file it skips (one bad file never stops the run). The class = the
library; train and test are split by *footprint family*: the model name with every number replaced by
``#`` (``DIP-8_W7.62mm`` and ``DIP-14_W7.62mm`` are one family, ``DIP-8_W7.62mm_Socket`` another), so
parametric near-duplicates never straddle the split. The split ships in ``kicad_split.json`` (names only;
the meshes are CC-BY-SA-4.0 with the KiCad exception, which does not cover redistribution as a
collection, so they are never committed).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from peftkit.core.errors import DataError
from peftkit.core.io import atomic_write_bytes, atomic_write_json
from peftkit.data.points.sampling import mesh_to_cloud, save_cloud
from peftkit.data.points.vrml import read_vrml

PACKAGE = "kicad-packages3d"
MODELS_DIR = "usr/share/kicad/3dmodels"
SPLIT_FILE = Path(__file__).with_name("kicad_split.json")
# 12 libraries with >= 77 models each and several footprint families (docs/point.md).
CLASSES = (
    "Capacitor_THT",
    "Connector_Dsub",
    "Connector_PinHeader_2.54mm",
    "Crystal",
    "Diode_THT",
    "Inductor_THT",
    "LED_THT",
    "Package_DFN_QFN",
    "Package_DIP",
    "Package_SO",
    "Package_TO_SOT_THT",
    "Resistor_THT",
)
MAX_PER_CLASS = 100  # caps the big libraries so classes are balanced and CPU runs stay short
TEST_FRACTION = 0.25  # target share of test models per class (whole families only)
VAL_FRACTION = 0.2  # share of each library's train models carved out (whole families) for validation
VAL_SEED = 0
DEFAULT_POINTS = 2048  # stored points per model (FPS order); training takes FPS 1.2 * 1024 -> random 1024


def family(name: str) -> str:
    """Footprint family of a model name: every number replaced by ``#``."""
    return re.sub(r"\d+(?:\.\d+)?", "#", name)


def _stable_seed(text: str) -> int:
    return zlib.crc32(text.encode())


def _pick_families(models: list[str], fraction: float, rng: np.random.Generator) -> list[str]:
    """Whole families (in a seeded random order) until about ``fraction`` of ``models`` is picked."""
    fams: dict[str, list[str]] = defaultdict(list)
    for m in models:
        fams[family(m)].append(m)
    order = sorted(fams)
    rng.shuffle(order)
    target, picked = fraction * len(models), []
    for f in order:
        if len(picked) < target and len(picked) + len(fams[f]) <= 2 * target and len(fams) > 1:
            picked.extend(fams[f])
    return sorted(picked)


def make_split(
    names: dict[str, list[str]],
    classes: tuple[str, ...] = CLASSES,
    cap: int = MAX_PER_CLASS,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
) -> dict:
    """Family-disjoint train/test split of ``{library: [model names]}`` (deterministic for a seed)."""
    split: dict = {"classes": list(classes), "train": {}, "test": {}}
    for lib in classes:
        models = sorted(names.get(lib, []))
        if not models:
            raise DataError(f"library {lib} has no models in {PACKAGE}")
        rng = np.random.default_rng(seed + _stable_seed(lib))
        if len(models) > cap:
            models = sorted(rng.choice(models, cap, replace=False).tolist())
        test = _pick_families(models, test_fraction, rng)
        split["train"][lib] = sorted(set(models) - set(test))
        split["test"][lib] = test
    return split


def carve_val(split: dict, fraction: float = VAL_FRACTION, seed: int = VAL_SEED) -> dict[str, list[str]]:
    """A validation split carved from ``split["train"]``: whole footprint families, about ``fraction``
    of each library's train models, deterministic for ``seed``. Training uses train minus val."""
    val = {}
    for lib in split["classes"]:
        rng = np.random.default_rng(seed + _stable_seed("val/" + lib))
        val[lib] = _pick_families(sorted(split["train"][lib]), fraction, rng)
    return val


def check_split(split: dict) -> None:
    """DataError (one line) unless train, val (if any) and test share no model and no family."""
    parts = [p for p in ("train", "val", "test") if p in split]
    for lib in split["classes"]:
        fams = {p: {family(n) for n in split[p].get(lib, [])} for p in parts}
        if "val" in split:
            fams["train"] -= fams["val"]  # training uses train minus val
        for i, a in enumerate(parts):
            for b in parts[i + 1 :]:
                shared = fams[a] & fams[b]
                if shared:
                    raise DataError(
                        f"the KiCad {a} and {b} splits share footprint families in {lib} "
                        f"(e.g. '{sorted(shared)[0]}'); carve the val split from train families only"
                    )


def load_split(path: Path = SPLIT_FILE) -> dict:
    """The shipped split: ``{"classes", "train", "val", "test"}`` (lib -> names; val is part of train).

    Raises:
        DataError: unreadable file, or splits that share a footprint family.
    """
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the KiCad split {path}: {e}") from None
    if not isinstance(split, dict) or not {"classes", "train", "test"} <= set(split):
        raise DataError(f"{path} is not a KiCad split (needs classes, train and test)")
    check_split(split)
    return split


def fetch_deb(cache: Path) -> Path:
    """The ``kicad-packages3d`` .deb in ``cache/downloads`` (``apt-get download`` when missing)."""
    dl = cache / "downloads"
    found = sorted(dl.glob(f"{PACKAGE}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise DataError(f"apt-get not found: download {PACKAGE}_*.deb (Debian/Ubuntu) into {dl} by hand")
    dl.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["apt-get", "download", PACKAGE], cwd=dl, capture_output=True, text=True)
    found = sorted(dl.glob(f"{PACKAGE}_*.deb"))
    if res.returncode != 0 or not found:
        raise DataError(
            f"apt-get download {PACKAGE} failed ({res.stderr.strip()[-200:]}); "
            f"try 'apt-get update' or put the .deb into {dl}"
        )
    return found[-1]


def _deb_tar_members(deb: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Stream the .deb's data archive (``dpkg-deb --fsys-tarfile``; an argument list, no shell).

    Yields ``(tarfile, member)`` pairs in archive order; raises DataError when dpkg-deb fails.
    """
    if shutil.which("dpkg-deb") is None:
        raise DataError(f"dpkg-deb not found: install dpkg to read {deb.name}")
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                yield tar, member
    except tarfile.TarError as e:
        proc.kill()
        raise DataError(f"cannot read the archive in {deb}: {e}") from None
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        raise DataError(f"dpkg-deb cannot read {deb}: {err.strip()[-200:]}")


def _model_path(name: str) -> tuple[str, str] | None:
    """``(library, model)`` of an archive path ``./usr/share/kicad/3dmodels/LIB.3dshapes/MODEL.wrl``."""
    p = PurePosixPath(name)
    parts = p.parts[1:] if p.parts[:1] == (".",) else p.parts
    if p.suffix != ".wrl" or len(parts) < 2 or not p.parent.name.endswith(".3dshapes"):
        return None
    if "/".join(parts[:-2]) != MODELS_DIR:
        return None
    return p.parent.name.removesuffix(".3dshapes"), p.stem


def list_deb_models(deb: Path) -> dict[str, list[str]]:
    """``{library: [model names]}`` of every ``.wrl`` in the .deb (reads the archive listing only)."""
    out: dict[str, list[str]] = defaultdict(list)
    for _, member in _deb_tar_members(deb):
        hit = _model_path(member.name) if member.isfile() else None
        if hit:
            out[hit[0]].append(hit[1])
    return dict(out)


def extract_libraries(deb: Path, libraries: list[str], dest: Path) -> Path:
    """Extract the ``.wrl`` files of ``libraries`` under ``dest``; returns the models folder.

    Each file is written by name (library folder + model stem; never the archive's own path, so no member
    can escape ``dest``) and only once its library is complete is it marked done, so an interrupted
    extraction is redone at the next call.
    """
    root = dest / MODELS_DIR
    missing = {lib for lib in libraries if not (root / f"{lib}.3dshapes" / ".complete").is_file()}
    if not missing:
        return root
    for tar, member in _deb_tar_members(deb):
        hit = _model_path(member.name) if member.isfile() else None
        if not hit or hit[0] not in missing:
            continue
        src = tar.extractfile(member)
        if src is None:
            continue
        folder = root / f"{hit[0]}.3dshapes"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / f"{hit[1]}.wrl", src.read())
    for lib in missing:
        folder = root / f"{lib}.3dshapes"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".complete").write_text("")
    return root


def clouds_dir(cache: Path, points: int) -> Path:
    return cache / "kicad" / f"clouds_{points}"


def prepare(split: dict, cache: Path, points: int = DEFAULT_POINTS) -> dict:
    """Fetch, extract and sample every model of ``split``; returns counts and the skipped files."""
    deb = fetch_deb(cache)
    root = extract_libraries(deb, split["classes"], cache / "kicad" / "wrl")
    out_dir = clouds_dir(cache, points)
    done, skipped = 0, []
    jobs = [(lib, n) for part in ("train", "test") for lib in split["classes"] for n in split[part][lib]]
    for lib, name in tqdm(jobs, desc="kicad: sampling models", unit="model"):
        target = out_dir / lib / f"{name}.npz"
        if target.is_file():
            done += 1
            continue
        try:
            mesh = read_vrml(root / f"{lib}.3dshapes" / f"{name}.wrl")
            pts, mat = mesh_to_cloud(mesh, points, seed=_stable_seed(name))
            save_cloud(target, pts, mat, mesh.materials)
            done += 1
        except DataError as e:  # one bad file never stops the run: count it and go on
            skipped.append(f"{lib}/{name}: {e}")
        except (ValueError, IndexError, RecursionError, MemoryError) as e:  # a reader gap, not a crash
            skipped.append(f"{lib}/{name}: unreadable ({type(e).__name__}: {str(e)[:80]})")
    report = {
        "deb": deb.name,
        "points": points,
        "prepared": done,
        "skipped": len(skipped),
        "skipped_files": skipped,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "prepare_log.json", report, indent=1)
    return report
