"""The ``peftkit`` command line.

    peftkit list                                   methods, backbones, datasets, benchmarks
    peftkit train CONFIG [k=v ...] [--resume RUN] [--overwrite]  one run (torchrun-aware)
    peftkit train --resume RUN [k=v ...]           continue RUN with its own config (resumable keys only)
    peftkit eval RUN_DIR [--split test|val]        evaluate a saved run
    peftkit predict RUN_DIR --text "..." | --file F.csv [--out P.csv]   classify new texts with a run
    peftkit bench NAME [k=v ...]                   a benchmark (peftkit.bench.BENCHES)
    peftkit pretrain CONFIG [k=v ...]              Point-MAE pretraining
    peftkit point-bank CONFIG [k=v ...]            Point-PEFT memory bank
    peftkit data kicad [k=v ...]                   extract the KiCad 3D dataset

``--import mypackage.mymodule`` (list, train, eval, predict, bench; repeatable) imports a module first, so the
backbones, datasets and methods it registers can be named in the config.
Options and ``key=value`` overrides may come in any order (``peftkit train CFG --no-progress out_dir=x``).
Errors a user can cause (PeftkitError, a missing or unwritable file, a full disk, bad YAML) print one line
``peftkit: error: ...`` on stderr and exit 2; Ctrl-C exits 130. This module is the top of the package: it
dispatches to ``peftkit.train``, ``peftkit.recipes`` and ``peftkit.bench``, and nothing imports it.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from peftkit.core.errors import ConfigError, PeftkitError, UnsupportedError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


HEADLINE = ("trainable_params", "trainable_pct", "steps", "train_time_s", "step_time_s")


class _Parser(argparse.ArgumentParser):
    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:  # one line, like every other user error
        raise ConfigError(f"{message} (see: {self.prog} --help)")


def _lazy(module: str, fn: str, what: str) -> Callable[..., Any]:
    """``module.fn``, or an UnsupportedError when that module is not part of this install."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise UnsupportedError(
                f"{what} is not available: module {module} is missing from this install"
            ) from None
        raise
    if not hasattr(mod, fn):
        raise UnsupportedError(f"{what} is not available: {module} has no {fn}()")
    return getattr(mod, fn)


def cmd_list(args: argparse.Namespace) -> int:
    import peftkit as pk
    from peftkit.bench import BENCHES

    sections = [
        ("methods", pk.list_methods()),
        ("backbones", pk.list_backbones()),
        ("datasets", pk.list_datasets()),
        ("benches", {k: v[1] for k, v in BENCHES.items()}),
    ]
    for title, entries in sections:
        print(f"{title}:")
        width = max((len(k) for k in entries), default=0)
        for name, summary in entries.items():
            print(f"  {name:<{width}}  {summary}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from peftkit.train.config import load_config
    from peftkit.train.loop import run

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.isfile(config):
        config, overrides = None, [config, *overrides]  # `peftkit train --resume RUN k=v`: no CONFIG given
    if config is None:
        if args.resume is None:
            raise ConfigError("peftkit train needs a CONFIG (a YAML run config), e.g. peftkit train run.yaml")
        config = os.path.join(args.resume, "config.yaml")  # continue the run as it was configured
    cfg = load_config(config, overrides)
    summary = run(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _print_summary(summary, cfg.out_dir if args.resume is None else args.resume)
    return 0


def _print_summary(summary: dict[str, Any], out_dir: str) -> None:
    """The headline metrics on one line (eval/*, sizes, time) and where the full summary is."""
    keys = [k for k in summary if k.startswith("eval/")] + [k for k in HEADLINE if k in summary]
    parts = [f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys]
    print(f"peftkit: {out_dir}: " + " ".join(parts))
    print(f"peftkit: all {len(summary)} metrics in {os.path.join(out_dir, 'metrics.json')}")


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import peftkit as pk
    from peftkit.core.io import atomic_write_json
    from peftkit.train.build import build_data, eval_loader, seed_everything
    from peftkit.train.config import load_config
    from peftkit.train.distributed import pick_device
    from peftkit.train.evaluate import evaluate
    from peftkit.train.rundir import RunLock, check_writable

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir} is not a run directory (no config.yaml); give the out_dir of a peftkit train run"
        )
    if not (run_dir / "adapter").is_dir():
        raise ConfigError(f"{run_dir} has no adapter/: the run did not finish; resume it with --resume first")
    check_writable(run_dir, "run directory")  # eval_<split>.json goes there: fail before the evaluation
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    seed_everything(cfg.seed)
    data = build_data(cfg)
    model = pk.load_backbone(
        cfg.backbone.name, task=cfg.backbone.task, num_labels=data.num_labels, **cfg.backbone.kwargs
    )
    model = pk.load_adapter(model, run_dir / "adapter")
    device = pick_device(cfg.train.device)
    loader = eval_loader(data, args.split, cfg.train.eval_batch_size, cfg.train.num_workers)
    if loader is None:
        raise ConfigError(f"data '{cfg.data.name}' has no '{args.split}' split")
    res = evaluate(
        model.to(device),
        loader,
        device,
        data.num_labels,
        data.metrics,
        bf16=cfg.train.bf16,
        progress=not args.no_progress,
        desc=f"eval {args.split}",
    )
    out = {f"{args.split}/{k}": v for k, v in res.items()}
    with RunLock(run_dir):  # not while a training run writes there
        atomic_write_json(run_dir / f"eval_{args.split}.json", out, indent=1)
    print(json.dumps(out))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from peftkit.recipes.predict import run_predict

    preds, out = run_predict(args.run_dir, texts=args.text or (), file=args.file, out=args.out,
                             column=args.column, batch_size=args.batch_size, progress=not args.no_progress)
    if out is None:
        for p in preds:
            print(f"{p.label}\t{p.score:.4f}\t{p.text}")
    else:
        print(f"peftkit: {len(preds)} predictions in {out}")
    return 0


def _import_user_modules(modules: Sequence[str]) -> None:
    """``--import`` modules: they register their own backbones, datasets or methods when imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise ConfigError(
                f"--import {name}: module '{e.name}' not found; make it importable (pip install -e it, or "
                "add its folder to PYTHONPATH)"
            ) from None


def cmd_bench(args: argparse.Namespace) -> int:
    from peftkit.bench import BENCHES

    if args.name is None:
        if args.help:
            build_parser().commands["bench"].print_help()
            return 0
        raise ConfigError(f"peftkit bench needs a NAME; choose one of: {', '.join(BENCHES)}")
    if args.name not in BENCHES:
        raise ConfigError(f"unknown bench '{args.name}'; choose one of: {', '.join(BENCHES)}")
    overrides = [*args.overrides, "--help"] if args.help else list(args.overrides)  # the bench lists its keys
    return int(_lazy(BENCHES[args.name][0], "main", f"bench '{args.name}'")(overrides) or 0)


def cmd_pretrain(args: argparse.Namespace) -> int:
    fn = _lazy("peftkit.recipes.pretrain_point_mae", "main", "pretrain")
    return int(fn(args.config, list(args.overrides)) or 0)


def cmd_point_bank(args: argparse.Namespace) -> int:
    fn = _lazy("peftkit.recipes.point_bank", "main", "point-bank")
    return int(fn(args.config, list(args.overrides)) or 0)


def cmd_data(args: argparse.Namespace) -> int:
    datasets = {"kicad": "peftkit.recipes.kicad_fetch"}
    if args.name not in datasets:
        raise ConfigError(f"unknown data preparation '{args.name}'; choose one of: {', '.join(datasets)}")
    return int(_lazy(datasets[args.name], "main", f"data {args.name}")(list(args.overrides)) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="peftkit", description="Parameter-, memory- and activation-efficient fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ls = sub.add_parser("list", help="methods, backbones, datasets, benches")
    ls.set_defaults(fn=cmd_list)
    t = sub.add_parser("train", help="train one run from a YAML config")
    t.add_argument("config", nargs="?", help="the YAML run config (with --resume, default RUN/config.yaml)")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-4 method.rank=16")
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty out_dir that is not a peftkit run (only the run's files are replaced)",
    )
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a saved run")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the run's config (e.g. data.*)")
    e.add_argument("--split", choices=("test", "val"), default="test")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_eval)
    pr = sub.add_parser("predict", help="classify texts with a finished run (CSV out)")
    pr.add_argument("run_dir")
    pr.add_argument("--text", action="append", help="a text to classify (repeatable)")
    pr.add_argument("--file", help="a CSV / TSV / JSONL file of texts")
    pr.add_argument("--column", default="text", help="the text column of --file (default: text)")
    pr.add_argument("--out", help="the CSV to write (default: beside --file as NAME.predictions.csv)")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(fn=cmd_predict)
    b = sub.add_parser("bench", help="run a benchmark", add_help=False)
    b.add_argument("name", nargs="?", help="the bench (peftkit list shows them)")
    b.add_argument("overrides", nargs="*", help="key=value options of the bench")
    b.add_argument("-h", "--help", action="store_true", help="this help, or with NAME the bench's options")
    b.set_defaults(fn=cmd_bench)
    for name, fn, helptext in (
        ("pretrain", cmd_pretrain, "Point-MAE pretraining"),
        ("point-bank", cmd_point_bank, "build a Point-PEFT memory bank"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("config")
        s.add_argument("overrides", nargs="*")
        s.set_defaults(fn=fn)
    d = sub.add_parser("data", help="prepare a dataset (kicad)")
    d.add_argument("name")
    d.add_argument("overrides", nargs="*")
    d.set_defaults(fn=cmd_data)
    for cmd in (ls, t, e, pr, b):
        cmd.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                         help="import MODULE first (it registers your backbones / datasets / methods)")
    p.commands = dict(sub.choices)
    return p


def _user_error(msg: str) -> int:
    print(f"peftkit: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return EXIT_USER_ERROR


def _os_error(e: OSError) -> str:
    """One line for a file-system error: what failed, where, and what to do."""
    where = f": {e.filename}" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return (
            f"no space left on the device{where}; free some space and rerun (a training run continues with "
            "--resume RUN_DIR from its last complete checkpoint)"
        )
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return f"{what}{where}; choose a writable out_dir"
    return f"{(e.strerror or type(e).__name__).lower()}{where}" if e.strerror else str(e)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``peftkit`` command; returns the exit code."""
    from peftkit.core.quiet import quiet_backend_logs

    quiet_backend_logs()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        if not argv or argv[0] not in parser.commands:
            parser.parse_args(argv)  # --help, or the error naming the valid commands
        # each command parses its own options intermixed with the key=value overrides
        args = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        _import_user_modules(getattr(args, "imports", []))
        return int(args.fn(args))
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PeftkitError as e:
        return _user_error(str(e))
    except BrokenPipeError:  # `peftkit ... | head`: the reader left; no error to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        return _user_error(_os_error(e))
    except Exception as e:
        import yaml

        if isinstance(e, yaml.YAMLError):
            return _user_error(f"invalid YAML: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main())
