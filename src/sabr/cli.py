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
from .errors import ConfigError, SabrError

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
    import os

    from .pipeline import resume, run
    from .report import format_table

    if args.resume:
        given = sorted(k for k in vars(args) if k in {f.name for f in fields(RunConfig)} and k != "device")
        if given or args.config or args.overwrite:
            flags = ", ".join("--" + k.replace("_", "-") for k in given) or ("--config" if args.config else "--overwrite")
            raise ConfigError(f"--resume continues {args.resume} with the settings saved in its config.yaml; "
                              f"leave out {flags} (only --device may change).")
        summary = resume(args.resume, progress=not args.quiet, device=getattr(args, "device", None))
    else:
        summary = run(config_from_args(args), progress=not args.quiet, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(format_table(summary))
    print(f"\nrun folder: {summary['config']['out']} (summary.md, summary.json, plots, checkpoints)")
    return 0


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the same keys as these flags (flags given here win)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last finished epoch "
                   "(its saved settings are used)")
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


# name -> (help, set-up, handler). A new command adds one line here and its two functions.
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "run": ("train base, SABR and pruned models and write the report", _setup_run, _cmd_run),
    "prune": ("re-prune a finished run at several thresholds (accuracy vs sparsity)", _setup_prune, _cmd_prune),
    "models": ("list the available models", _setup_models, _cmd_models),
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
    import os

    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    if os.environ.get("RANK", "0") != "0" and not args.debug:
        level = logging.WARNING  # under torchrun the other ranks stay quiet
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except SabrError as exc:
        if args.debug:
            raise
        print(f"sabr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sabr {args.command}: interrupted; files already written in the run folder are complete "
              "(continue a `sabr run` with --resume <run folder>).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
