"""``sabr``: the command-line shell over the library. No logic lives only here.

Every user error (:class:`~sabr.errors.SabrError`) is printed as one paragraph with exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import MISSING, Field, fields
from typing import TYPE_CHECKING, Any, Callable

from .app_config import AppSettings, ElevatorSettings, RecognizeSettings
from .config import RunConfig, load_yaml
from .errors import ConfigError, SabrError
from .signals import Terminated, sigterm_as_interrupt
from .fields import field_types

if TYPE_CHECKING:  # the CLI imports torch, numpy and the apps only in the commands that need them
    import numpy as np

    from .apps import Recognizer

log = logging.getLogger("sabr")


def _default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = RunConfig) -> None:
    """One ``--flag`` per field of the dataclass ``cls`` (:class:`RunConfig` or an app's settings).

    The flag converts its strings with the field's type as :func:`sabr.fields.field_types` resolves it
    (the type ``--config`` files are read with); list and tuple fields take several values, a ``Literal``
    its values as choices. A field's metadata gives its help, and optionally ``choices``, ``nargs`` (list fields) or
    ``switch`` (a plain on-switch such as ``--headless``; other ``bool`` fields get ``--x`` / ``--no-x``);
    ``cls.required_flags`` names the flags that must be given. The help ends with the field's default
    unless the default is ``None`` or the help already states it. Unset flags stay absent from the
    parsed namespace (so a YAML file's values, or the dataclass's defaults, fill them in).
    """
    required, types = getattr(cls, "required_flags", ()), field_types(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        help_text = f.metadata["help"]
        if default is not None and "(default" not in help_text and not f.metadata.get("switch"):
            help_text += f" (default: {default})"
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if f.name in required:
            kw["required"] = True
        if f.metadata.get("switch"):
            parser.add_argument(flag, action="store_true", **kw)
        elif types[f.name].kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            ftype = types[f.name]
            if ftype.many:
                kw["nargs"] = ftype.length or f.metadata.get("nargs", "+")
            choices = f.metadata.get("choices", ftype.literals)
            if choices is not None:
                kw["choices"] = choices
            parser.add_argument(flag, type=ftype.flag_type, **kw)


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given as flags on the command line."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults, then the ``--config`` YAML file, then the flags given on the command line."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    values.update(_given(args, RunConfig))
    return RunConfig.from_dict(values)


def _add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-model-code", action="store_true",
                   help="import the user code (file.py:factory) a saved model was trained with; its file must be "
                        "unchanged since (SHA-256 checked). Never needed for built-in, torchvision or timm models")


# --------------------------------------------------------------------------- commands
def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from .pipeline import resume, run
    from .report import format_result
    from .rundir import RunDir

    if args.resume:
        given = sorted(k for k in _given(args, RunConfig) if k != "device")
        if given or args.config or args.overwrite:
            flags = ", ".join("--" + k.replace("_", "-") for k in given) or ("--config" if args.config else "--overwrite")
            raise ConfigError(f"--resume continues {args.resume} with the settings saved in its {RunDir.CONFIG}; "
                              f"leave out {flags} (only --device may change).")
        summary = resume(args.resume, progress=not args.quiet, device=getattr(args, "device", None),
                         trust_model_code=args.trust_model_code)
    else:
        summary = run(config_from_args(args), progress=not args.quiet, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(format_result(summary, as_json=args.json), end="")
    return 0


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the same keys as these flags (flags given here win)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last finished epoch "
                   "(its saved settings are used)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (summary.json's content) on stdout "
                   "instead of the table")
    _add_trust_flag(p)
    add_config_arguments(p)


def _cmd_prune(args: argparse.Namespace) -> int:
    from .pipeline import reprune

    curve = reprune(args.run, args.teta1, gamma=args.gamma, progress=not args.quiet,
                    trust_model_code=args.trust_model_code)
    print(f"{'teta1':>8}  {'sparsity':>9}  {'test accuracy':>13}")
    for c in curve:
        print(f"{c['teta1']:>8g}  {100 * c['sparsity']:>8.2f}%  {100 * c['test_accuracy']:>12.2f}%")
    print(f"\nwrote {args.run}/tradeoff.json and {args.run}/tradeoff.png")
    return 0


def _setup_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a run folder written by `sabr run`")
    defaults = {f.name: _default(f) for f in fields(RunConfig)}  # the sweep and gamma of `sabr run`
    sweep, gamma = defaults["sweep"], defaults["gamma"]
    p.add_argument("--teta1", type=float, nargs="+", default=sweep,
                   help=f"pruning factors to try (default: {' '.join(map(str, sweep))})")
    p.add_argument("--gamma", type=float, default=gamma, help=f"pruning gamma (default: {gamma})")
    _add_trust_flag(p)


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    names = list_models(args.pattern)
    if names:
        print("\n".join(names))
    if not args.pattern.startswith("timm:"):
        log.info("also: timm:<name> (pip install 'torch-sabr[timm]'; list with `sabr models 'timm:*'`), and your own code as "
                 "path/to/file.py:factory or package.module:factory")
    return 0


def _setup_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*' or 'timm:vit_*'")


def _load_app(settings: AppSettings, trust_model_code: bool) -> tuple[Recognizer, list[np.ndarray] | None]:
    """The recogniser (its sparsity and MACs printed) and the reference images, from the shared options."""
    import torch

    from .apps import Recognizer, load_references, training_data_folder

    if settings.threads < 1:
        raise SabrError(f"--threads must be >= 1, got {settings.threads}.")
    torch.set_num_threads(settings.threads)
    recognizer = Recognizer.from_path(settings.model, settings.phase, settings.device, trust_model_code)
    print(recognizer.info().describe())
    print(recognizer.calibration.describe(settings.threshold))
    folder = settings.references or training_data_folder(settings.model)
    references = load_references(recognizer.classes, folder) if folder else None
    if references is None:
        log.info("no reference images (pass --references DIR); the reference panel shows class names only")
    return recognizer, references


def _cmd_recognize(args: argparse.Namespace) -> int:
    from .apps import open_source, recognize

    settings = RecognizeSettings(**_given(args, RecognizeSettings))
    recognizer, references = _load_app(settings, args.trust_model_code)
    source = open_source(settings.source)
    log.info("source: %s", source.description)
    summary = recognize(recognizer, source, settings, references)
    if summary.frames:
        print(f"{summary.frames} frames, latency per frame (preprocessing + model): median "
              f"{summary.latency_ms_median:.2f} ms, p90 {summary.latency_ms_p90:.2f} ms")
    if summary.out:
        print(f"wrote {summary.out}/predictions.jsonl and the annotated frames")
    return 0


def _cmd_elevator(args: argparse.Namespace) -> int:
    from .apps import open_source, read_script, run_elevator

    s = ElevatorSettings(**_given(args, ElevatorSettings))
    if (s.source is None) == (s.script is None):
        raise SabrError("pass exactly one input: --source (webcam, video, image folder) or --script FILE.")
    if s.model:
        recognizer, references = _load_app(s, args.trust_model_code)
        classes = recognizer.classes
    elif s.script and s.floors:
        recognizer, references, classes = None, None, [str(i) for i in range(s.floors)]
    else:
        raise SabrError("pass --model (a run folder or checkpoint), or --script with --floors N to simulate "
                        "without a model.")
    summary = run_elevator(classes, recognizer, source=open_source(s.source) if s.source else None,
                           script=read_script(s.script, classes) if s.script else None, references=references,
                           settings=s)
    for e in summary.events:
        print(f"{e['t']:8.2f}s  {e['event']:<11} floor {e['floor']}")
    if summary.out:
        print(f"wrote {summary.out}/events.jsonl and {summary.out}/elevator.mp4 ({summary.frames} frames)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    result = export_run(args.run, args.format, args.out, phase=args.phase, trust_model_code=args.trust_model_code)
    if args.format == "web":
        print(f"wrote the web site {result['path']} (model {result['bytes']:,} bytes of ONNX"
              f"{', shrunk' if result['shrunk'] else ''}; max abs difference {result['max_abs_diff']:.2e}); "
              f"serve it with `sabr serve {result['path']}`")
        if result.get("hint"):
            print(result["hint"])
        return 0
    print(f"wrote {result['path']} ({result['bytes']:,} bytes, {args.format}); "
          f"max abs difference to the dense model: {result['max_abs_diff']:.2e}")
    if args.format == "shrunk":
        print(f"parameters: {result['params_before']:,} -> {result['params_after']:,}")
        for name, (before, after) in result["layers"].items():
            print(f"  {name:<28} {before:>6} -> {after:<6} output channels (-{before - after})")
    return 0


def _setup_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a run folder written by `sabr run`, or a checkpoint .safetensors "
                   "(sabr.save_checkpoint)")
    # no argparse choices: they would import sabr.export (torch) for every `sabr --help`; export_run checks it
    p.add_argument("--format", required=True, help="sparse, shrunk, onnx or web (see docs/deployment.md and "
                   "docs/apps.md)")
    p.add_argument("--out", help="output file (default: <run>/export/<phase>-<format>.safetensors or .onnx); for "
                   "web a folder (default: <run>/export/site)")
    p.add_argument("--phase", default="pruned", choices=["base", "sabr", "pruned"], help="checkpoint to export")
    _add_trust_flag(p)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve_until_interrupted, site_server, site_url

    server = site_server(args.site, args.host, args.port)
    print(f"serving {args.site} at {site_url(server)} (Ctrl+C stops)", flush=True)
    serve_until_interrupted(server)
    return 0


def _setup_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("site", help="a folder written by `sabr export --format web`")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                   "only; the camera needs localhost or HTTPS)")


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_run, format_table
    from .rundir import guard_outputs

    # a --json that would replace a file of the run is refused before measuring; written under the run's lock
    writing = guard_outputs(args.run, [args.json], "--json") if args.json not in (None, "-") else None
    r = bench_run(args.run, phase=args.phase, trust_model_code=args.trust_model_code,
                  batch_sizes=tuple(args.batch_sizes), runs=args.runs, warmup=args.warmup,
                  max_density=args.max_density, threads=args.threads, onnx=not args.no_onnx)
    if args.json == "-":  # the figures as JSON on stdout instead of the table
        from .checkpoint import json_text

        print(json_text(r), end="")
        return 0
    print(format_table(r))
    if writing is not None:
        from .checkpoint import write_json

        log.warning("sabr bench --json FILE is deprecated and goes in sabr 0.3.0: write `sabr bench --json > FILE`.")
        with writing:
            write_json(args.json, r)
        print(f"wrote {args.json}")
    return 0


def _setup_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a run folder written by `sabr run`, or a checkpoint .safetensors "
                   "(sabr.save_checkpoint)")
    p.add_argument("--phase", default="pruned", choices=["base", "sabr", "pruned"], help="checkpoint to measure")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes (default: 1 32)")
    p.add_argument("--runs", type=int, default=50, help="timed calls per path and batch size (default: 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: 5)")
    p.add_argument("--max-density", type=float, default=0.3,
                   help="layers with at most this fraction of non-zeros use sparse kernels (default: 0.3)")
    p.add_argument("--threads", type=int,
                   help="torch (and onnxruntime) threads during timing (default: torch's choice)")
    p.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime paths (default: the dense and "
                   "shrunk models are also timed in onnxruntime, when it is installed)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print the figures as JSON on stdout instead of the table (--json FILE, which also writes "
                        "them to FILE, is deprecated)")
    _add_trust_flag(p)


def _setup_app(cls: type) -> Callable[[argparse.ArgumentParser], None]:
    """The flags of an app's settings dataclass, and --trust-model-code."""
    def setup(p: argparse.ArgumentParser) -> None:
        add_config_arguments(p, cls)
        _add_trust_flag(p)
    return setup


# name -> (help, set-up, handler). A new command adds one line here and its two functions (or its settings
# dataclass and a handler).
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "run": ("train base, SABR and pruned models and write the report", _setup_run, _cmd_run),
    "prune": ("re-prune a finished run at several thresholds (accuracy vs sparsity)", _setup_prune, _cmd_prune),
    "models": ("list the available models", _setup_models, _cmd_models),
    "recognize": ("recognise gestures from a webcam, video or image folder (on screen or headless)",
                  _setup_app(RecognizeSettings), _cmd_recognize),
    "elevator": ("simulate a gesture-driven elevator (one floor per class)",
                 _setup_app(ElevatorSettings), _cmd_elevator),
    "export": ("export a run as a sparse checkpoint, a shrunk dense model, ONNX or a web page", _setup_export,
               _cmd_export),
    "serve": ("serve a web export on this machine (the page runs the recogniser and the elevator)", _setup_serve,
              _cmd_serve),
    "bench": ("CPU latency and file sizes: dense, shrunk and sparse-kernel paths, eager and in ONNX Runtime",
              _setup_bench, _cmd_bench),
}


# optional packages -> the pyproject extra that installs them
_EXTRAS = {"cv2": "apps", "onnx": "export", "onnxruntime": "export", "timm": "timm", "tensorboard": "tensorboard",
           "lightning": "lightning"}


def build_parser() -> argparse.ArgumentParser:
    """The ``sabr`` parser: one sub-command per entry of :data:`COMMANDS`, each with ``--debug`` and ``--quiet``."""
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
    """Run ``sabr`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code (2 for a user error)."""
    import os

    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # names that are not valid text print escaped, never crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    if os.environ.get("RANK", "0") != "0" and not args.debug:
        level = logging.WARNING  # under torchrun the other ranks stay quiet
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    with sigterm_as_interrupt():
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; a user error becomes one sentence on stderr and exit code 2."""
    try:
        return args.handler(args)
    except SabrError as exc:
        if args.debug:
            raise
        print(f"sabr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None or args.debug:
            raise
        print(f"sabr {args.command}: error: this command needs the package {exc.name!r}; install it with "
              f"pip install 'torch-sabr[{extra}]' (from a clone: pip install -e '.[{extra}]').", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"sabr {args.command}: {how}; files already written in the run folder are complete "
              "(continue a `sabr run` with --resume <run folder>).", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
