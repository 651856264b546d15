"""``sabr``: the command-line shell over the library. No logic lives only here.

Every user error (:class:`~sabr.errors.SabrError`) is printed as one paragraph with exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, fields
from typing import Callable

from .config import RunConfig, load_yaml
from .errors import SabrError

log = logging.getLogger("sabr")

_TYPES = {"int": int, "float": float, "str": str}


def _base_type(annotation: str) -> tuple[type, bool]:
    """``'int | None'`` -> (int, False); ``'list[float]'`` -> (float, True)."""
    text = annotation.replace(" | None", "")
    if text.startswith("list["):
        return _TYPES[text[5:-1]], True
    return _TYPES.get(text, str), False


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`RunConfig` field; unset flags stay absent (so YAML values survive)."""
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default})"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        typ, is_list = _base_type(f.type)
        kw = {"nargs": f.metadata.get("nargs", "+")} if is_list else {}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag, type=typ, default=argparse.SUPPRESS, help=help_text, **kw)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the ``--config`` YAML file, then the flags given on the command line."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in fields(RunConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return RunConfig.from_dict(values)


# --------------------------------------------------------------------------- commands
def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run
    from .report import format_table

    summary = run(config_from_args(args), progress=not args.quiet, overwrite=args.overwrite)
    print(format_table(summary))
    print(f"\nrun folder: {summary['config']['out']} (summary.md, summary.json, plots, checkpoints)")
    return 0


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the same keys as these flags (flags given here win)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    add_config_arguments(p)


def _cmd_prune(args: argparse.Namespace) -> int:
    from .pipeline import reprune

    curve = reprune(args.run, args.teta1, gamma=args.gamma, progress=not args.quiet)
    print(f"{'teta1':>8}  {'sparsity':>9}  {'test accuracy':>13}")
    for c in curve:
        print(f"{c['teta1']:>8g}  {100 * c['sparsity']:>8.2f}%  {100 * c['test_accuracy']:>12.2f}%")
    print(f"\nwrote {args.run}/tradeoff.json and {args.run}/tradeoff.png")
    return 0


def _setup_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a run folder written by `sabr run`")
    p.add_argument("--teta1", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
                   help="pruning factors to try (default: 0.05 0.1 0.2 0.3 0.5 0.75 1.0)")
    p.add_argument("--gamma", type=float, default=0.1, help="pruning gamma (default: 0.1)")


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    print("\n".join(list_models(args.pattern)))
    return 0


def _setup_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'vgg*'")


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    result = export_run(args.run, args.format, args.out, phase=args.phase)
    print(f"wrote {result['path']} ({result['bytes']:,} bytes, {args.format}); "
          f"max abs difference to the dense model: {result['max_abs_diff']:.2e}")
    if args.format == "shrunk":
        print(f"parameters: {result['params_before']:,} -> {result['params_after']:,}")
        for name, (before, after) in result["layers"].items():
            print(f"  {name:<28} {before:>6} -> {after:<6} output channels (-{before - after})")
    return 0


def _setup_export(p: argparse.ArgumentParser) -> None:
    from .export import FORMATS

    p.add_argument("--run", required=True, help="a run folder written by `sabr run`")
    p.add_argument("--format", required=True, choices=FORMATS, help="sparse, shrunk or onnx (see docs/deployment.md)")
    p.add_argument("--out", help="output file (default: <run>/export/<phase>-<format>.safetensors or .onnx)")
    p.add_argument("--phase", default="pruned", choices=["base", "sabr", "pruned"], help="checkpoint to export")


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench import bench_run

    r = bench_run(args.run, phase=args.phase, batch_sizes=tuple(args.batch_sizes), runs=args.runs,
                  warmup=args.warmup, max_density=args.max_density, threads=args.threads)
    print(f"{r['model'].get('name', '?')}: MACs {r['macs_dense']:,} -> {int(r['macs_pruned']):,} "
          f"({100 * r['macs_reduction']:.2f}% fewer), ideal speedup {r['ideal_speedup']:.2f}x, "
          f"{r['threads']} thread(s), median of {r['runs']} runs")
    print(f"{'batch':>5}  {'path':<14} {'median ms':>10} {'speedup':>8} {'ideal':>6}  {'max |diff|':>10}")
    for b, paths in r["latency"].items():
        for name, t in paths.items():
            print(f"{b:>5}  {name:<14} {1e3 * t['seconds']:>10.3f} {t['speedup']:>7.2f}x {r['ideal_speedup']:>5.2f}x"
                  f"  {r['max_abs_diff'][name]:>10.1e}")
    s = r["sizes"]
    print("files: " + ", ".join(f"{k} {v:,} bytes ({100 * v / s['dense']:.1f}%)" for k, v in s.items()))
    if args.json:
        from .checkpoint import write_json

        write_json(args.json, r)
        print(f"wrote {args.json}")
    return 0


def _setup_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a run folder written by `sabr run`")
    p.add_argument("--phase", default="pruned", choices=["base", "sabr", "pruned"], help="checkpoint to measure")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes (default: 1 32)")
    p.add_argument("--runs", type=int, default=50, help="timed calls per path and batch size (default: 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: 5)")
    p.add_argument("--max-density", type=float, default=0.3,
                   help="layers with at most this fraction of non-zeros use sparse kernels (default: 0.3)")
    p.add_argument("--threads", type=int, help="torch threads during timing (default: torch's choice)")
    p.add_argument("--json", help="also write the figures to this JSON file")


# name -> (help, set-up, handler). A new command adds one line here and its two functions.
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "run": ("train base, SABR and pruned models and write the report", _setup_run, _cmd_run),
    "prune": ("re-prune a finished run at several thresholds (accuracy vs sparsity)", _setup_prune, _cmd_prune),
    "models": ("list the available models", _setup_models, _cmd_models),
    "export": ("export a run as a sparse checkpoint, a shrunk dense model or ONNX", _setup_export, _cmd_export),
    "bench": ("CPU latency and file sizes: dense, shrunk and sparse-kernel paths", _setup_bench, _cmd_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sabr", description="SABR: Sparsity-Accuracy Balanced Regularization")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, setup, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        setup(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except SabrError as exc:
        if args.debug:
            raise
        print(f"sabr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sabr {args.command}: interrupted; files already written in the run folder are complete.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
