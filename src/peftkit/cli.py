"""The ``peftkit`` command line.

    peftkit list                                   methods, backbones, datasets, benchmarks
    peftkit train CONFIG [k=v ...] [--resume RUN]  one run (torchrun-aware)
    peftkit eval RUN_DIR [--split test|val]        evaluate a saved run
    peftkit bench NAME [k=v ...]                   a benchmark (peftkit.bench.BENCHES)
    peftkit pretrain CONFIG [k=v ...]              Point-MAE pretraining
    peftkit point-bank CONFIG [k=v ...]            Point-PEFT memory bank
    peftkit data kicad [k=v ...]                   extract the KiCad 3D dataset

Errors a user can cause (PeftkitError, a missing file, bad YAML) print one line ``peftkit: error: ...`` on
stderr and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from peftkit.core.errors import ConfigError, PeftkitError, UnsupportedError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
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

    cfg = load_config(args.config, args.overrides)
    summary = run(cfg, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _print_summary(summary, cfg.out_dir if args.resume is None else args.resume)
    return 0


def _print_summary(summary: dict[str, Any], out_dir: str) -> None:
    keys = [k for k in summary if k.startswith(("eval/", "density/"))]
    keys += ["trainable_params", "trainable_pct", "step_time_s"]
    parts = [
        f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
        for k in keys
        if k in summary
    ]
    print(f"peftkit: {out_dir}: " + " ".join(parts))


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import peftkit as pk
    from peftkit.train.build import build_data, eval_loader, seed_everything
    from peftkit.train.config import load_config
    from peftkit.train.distributed import pick_device
    from peftkit.train.evaluate import evaluate
    from peftkit.train.runlog import write_atomic

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir} is not a run directory (no config.yaml); give the out_dir of a peftkit train run"
        )
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
    write_atomic(run_dir / f"eval_{args.split}.json", json.dumps(out, indent=1))
    print(json.dumps(out))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from peftkit.bench import BENCHES

    if args.name not in BENCHES:
        raise ConfigError(f"unknown bench '{args.name}'; choose one of: {', '.join(BENCHES)}")
    return int(_lazy(BENCHES[args.name][0], "main", f"bench '{args.name}'")(list(args.overrides)) or 0)


def cmd_pretrain(args: argparse.Namespace) -> int:
    fn = _lazy("peftkit.backbones.point.pretrain", "main", "pretrain")
    return int(fn(args.config, list(args.overrides)) or 0)


def cmd_point_bank(args: argparse.Namespace) -> int:
    fn = _lazy("peftkit.methods.point_peft.bank", "main", "point-bank")
    return int(fn(args.config, list(args.overrides)) or 0)


def cmd_data(args: argparse.Namespace) -> int:
    datasets = {"kicad": "peftkit.data.points.kicad"}
    if args.name not in datasets:
        raise ConfigError(f"unknown data preparation '{args.name}'; choose one of: {', '.join(datasets)}")
    return int(_lazy(datasets[args.name], "main", f"data {args.name}")(list(args.overrides)) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="peftkit", description="Parameter-, memory- and activation-efficient fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="methods, backbones, datasets, benches").set_defaults(fn=cmd_list)
    t = sub.add_parser("train", help="train one run from a YAML config")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-4 method.rank=16")
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a saved run")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the run's config (e.g. data.*)")
    e.add_argument("--split", choices=("test", "val"), default="test")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_eval)
    b = sub.add_parser("bench", help="run a benchmark")
    b.add_argument("name")
    b.add_argument("overrides", nargs="*")
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
    return p


def _user_error(msg: str) -> int:
    print(f"peftkit: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``peftkit`` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.fn(args))
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PeftkitError as e:
        return _user_error(str(e))
    except FileNotFoundError as e:
        return _user_error(f"{e.strerror or 'not found'}: {e.filename}" if e.filename else str(e))
    except Exception as e:
        import yaml

        if isinstance(e, yaml.YAMLError):
            return _user_error(f"invalid YAML: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main())
