"""Structured SABR against Torch-Pruning: test accuracy against real CPU latency (issue #16).

Per model (``--models``, default resnet18 vgg11) on the sign-language photos at 32 px, one thread, per seed:

* ``sabr_structured``: ``python -m sabr run --structured --epochs-sabr 0 --finetune-epochs 30`` (skipped when
  its ``summary.json`` exists): the fine-tune starts with 87.5% of every channel group removed and the budget's
  adaptive rule gives 12.5% back while validation stays below 1 point under the base's without recovering, until
  an epoch is within it (``sabr.budget.CHANNEL_SHARES``, ``sabr.ramp.ShrinkingRamp``). Phase 2's group penalty
  is off (0 epochs): at equal epochs it did not help (docs/benchmarks.md). Its ``pruned`` checkpoint is made
  physically smaller with :func:`sabr.export.shrink`.
* ``dense``: the same run's ``base`` checkpoint.
* ``sabr_unstructured``: the default (unstructured) ``python -m sabr run`` from the same base
  (``--base-checkpoint``), its ``pruned`` checkpoint as it is: zeros in dense tensors, what a user of the
  default gets on a CPU without sparse kernels (about the dense latency).
* ``torch_pruning_<ratio>``: Torch-Pruning (``MagnitudePruner``, group L2 magnitude, the final classifier
  kept whole) from the SAME base at each channel ratio, then fine-tuned on the run's own splits
  (:func:`sabr.load_experiment`) for as many epochs as SABR's phase 2 and fine-tune took for that seed (30),
  with the run's optimizer, phase-2 learning rate, schedule and batch size, keeping the best-validation epoch
  (:func:`sabr.phases.finetune_masked`; a physically pruned model has no zeros to keep).

Every row is timed against the dense base in the same process, eager and in ONNX Runtime, batch 1 and 32
(:func:`sabr.bench.measure_latency`); ``speedup`` is base latency / row latency in the same runtime.
Rows accumulate per (name, seed) in ``--out/structured-<model>.json``, written after every row, so a run
cut off midway continues where it stopped; ``--report`` redraws the table and the Pareto plot from it.

    python benchmarks/structured.py --models resnet18 --quick     # smoke run, a few minutes
    python benchmarks/structured.py                                # the full run (hours), resumable
    python benchmarks/structured.py --report                       # table and plot of what is there
    python benchmarks/structured.py --report --seeds 3 4 5         # of some seeds only (structured-<model>-seeds3-4-5.png)
    python benchmarks/structured.py --base-from OLD_RUNS           # reuse another run's bases (no phase 1)
    python benchmarks/structured.py --retime                       # every row of a seed timed again, together
    python benchmarks/structured.py --methods sabr_unstructured    # add one method's rows to the results
    python benchmarks/structured.py --merge a/structured-vgg11.json b/structured-vgg11.json   # seeds run side
                                                                   # by side (--seeds N --out DIR), added to --out

Once a seed's base is trained, its Torch-Pruning rows can run beside the structured run's fine-tune: a second
process with ``--methods torch_pruning --finetune-epochs 30 --out OTHER``, joined afterwards by ``--merge``.

Needs ``torch-pruning`` (measured with 1.6) and, for the ONNX Runtime figures, sabr's ``export`` extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import sabr
from sabr.baselines import torch_pruning_channels
from sabr.bench import measure_latency
from sabr.checkpoint import write_json
from sabr.experiment import Experiment, evaluate_split
from sabr.phases import finetune_masked

log = logging.getLogger("structured")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sign-language-digits" / "Dataset"
MODELS = ("resnet18", "vgg11")
SEEDS = (0, 1, 2)
RATIOS = (0.5, 0.625, 0.75, 0.875)
"""Torch-Pruning's channel ratios: SABR's shares from 50% to its top (87.5%)."""
BATCHES = (1, 32)
METHODS = ("sabr_structured", "torch_pruning", "sabr_unstructured")
"""The rows ``--methods`` chooses from besides ``dense`` (``torch_pruning``: one row per ``--ratios`` value)."""
SABR_RUN = dict(epochs_sabr=0, sabr_finetune_epochs=30)
"""The structured ``sabr run``'s epochs after phase 1: all of them in the fine-tune's channel-share ramp."""
QUICK = dict(epochs_base=2, epochs_sabr=0, sabr_finetune_epochs=2, unstructured_epochs_sabr=2, seeds=[0],
             ratios=[0.5], finetune_epochs=1, runs=10)


# --------------------------------------------------------------------------- the methods
def sabr_run(model: str, seed: int, args: argparse.Namespace, structured: bool = True) -> Path:
    """The structured ``sabr run`` of ``model`` and ``seed`` (started unless its summary exists); its folder.
    ``structured=False``: the default ``sabr run`` from the structured run's base (``<folder>-unstructured``)."""
    out = run_folder(model, seed, args, structured)
    if (out / "summary.json").is_file():
        return out
    if (out / "config.yaml").is_file():  # cut off midway: continue it
        cmd = [sys.executable, "-m", "sabr", "run", "--quiet", "--resume", str(out)]
    else:
        cmd = [sys.executable, "-m", "sabr", "run", "--model", model, "--data", str(args.data), "--image-size",
               str(args.image_size), "--threads", str(args.threads), "--seed", str(seed), "--quiet", "--out", str(out)]
        if structured:
            cmd += ["--structured", "--epochs-sabr", str(args.epochs_sabr), "--finetune-epochs",
                    str(args.sabr_finetune_epochs)]
            if args.epochs_base is not None:
                cmd += ["--epochs-base", str(args.epochs_base)]
            if args.base_from is not None:
                cmd += ["--base-checkpoint", str(Path(args.base_from) / f"{model}-s{seed}" / "base.safetensors")]
        else:
            cmd += ["--base-checkpoint", str(base_folder(model, seed, args) / "base.safetensors")]
            if args.unstructured_epochs_sabr is not None:
                cmd += ["--epochs-sabr", str(args.unstructured_epochs_sabr)]
    log.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return out


def run_folder(model: str, seed: int, args: argparse.Namespace, structured: bool = True) -> Path:
    """Where :func:`sabr_run` puts the run of ``model`` and ``seed``."""
    return Path(args.runs_dir) / f"{model}-s{seed}{'' if structured else '-unstructured'}"


def base_folder(model: str, seed: int, args: argparse.Namespace) -> Path:
    """The structured run's folder once its base is trained, whether or not its fine-tune has finished (it may
    be running in another process): all the dense, Torch-Pruning and unstructured rows need; else the folder
    of the run, started (:func:`sabr_run`)."""
    out = run_folder(model, seed, args)
    return out if (out / "base.safetensors").is_file() else sabr_run(model, seed, args)


def sabr_epochs(run_dir: Path) -> int:
    """Epochs of training after phase 1 in a run: phase 2 plus the masked fine-tune."""
    s = json.loads((run_dir / "summary.json").read_text())
    return int(s["sabr"]["epochs"]) + int(s["pruned"].get("finetune_epochs") or 0)


class Seed:
    """One seed's run folder, experiment and models, each made on first use (a resumed seed may need none)."""

    def __init__(self, model: str, seed: int, args: argparse.Namespace) -> None:
        self.model, self.seed, self.args = model, seed, args
        self._cache: dict[str, object] = {}

    def _get(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def run(self) -> Path:
        return self._get("run", lambda: sabr_run(self.model, self.seed, self.args))

    @property
    def base_run(self) -> Path:
        """:func:`base_folder`: with ``--finetune-epochs``, the dense and Torch-Pruning rows can be measured in
        another process beside the structured run's fine-tune."""
        return self._get("base_run", lambda: base_folder(self.model, self.seed, self.args))

    @property
    def exp(self) -> Experiment:
        return self._get("exp", lambda: sabr.load_experiment(self.base_run))

    @property
    def base(self) -> nn.Module:
        return self._get("base", lambda: sabr.load_run(self.base_run, "base")[0].eval())

    def example(self) -> torch.Tensor:
        return self.exp.example_input().cpu()

    def structured(self) -> nn.Module:
        return sabr.export.shrink(sabr.load_run(self.run, "pruned")[0].eval(), self.example().repeat(2, 1, 1, 1))[0]

    def unstructured(self) -> nn.Module:
        return sabr.load_run(sabr_run(self.model, self.seed, self.args, structured=False), "pruned")[0].eval()

    def peer(self, ratio: float) -> nn.Module:
        model = torch_pruning_channels(self.base, self.example(), ratio)
        epochs = self.args.finetune_epochs or sabr_epochs(self.run)
        return finetune_masked(self.exp, model, epochs)[0].eval()


# --------------------------------------------------------------------------- measurement and results
def measure(s: Seed, name: str, model: nn.Module, runs: int) -> dict:
    """One result row: accuracy, size, MACs and latency of ``model`` against the seed's dense base.

    ``macs`` are what dense kernels compute for the model as it is (zeros included), ``macs_nonzero`` those
    of its non-zero weights (:func:`sabr.count_macs`), per image.
    """
    x = s.example()
    models = {"base": s.base} if model is s.base else {"base": s.base, "row": model}
    row = "row" if "row" in models else "base"
    t = measure_latency(models, x, BATCHES, runs=runs, warmup=max(1, runs // 10), threads=s.args.threads)
    macs = sabr.count_macs(model, x)
    return {"name": name, "seed": s.seed, "test_accuracy": evaluate_split(s.exp, model, s.exp.test)[1],
            "base_test_accuracy": evaluate_split(s.exp, s.base, s.exp.test)[1],
            "params": sum(p.numel() for p in model.parameters()), "macs": int(macs.macs_dense),
            "macs_nonzero": int(macs.macs_pruned), **timing(t["latency"], row),
            "max_abs_diff_onnxruntime": t["max_abs_diff"].get(f"ort_{row}")}


def timing(lat: dict, row: str) -> dict:
    """``latency_ms`` and ``speedup`` (over the path ``base``) of the path ``row`` in one measurement of
    :func:`sabr.bench.measure_latency` (its ``latency``), per runtime and batch size."""
    kinds = {k: p for k, p in {"eager": "", "onnxruntime": "ort_"}.items() if f"{p}{row}" in lat["1"]}
    return {"latency_ms": {k: {b: 1e3 * lat[b][p + row]["seconds"] for b in lat} for k, p in kinds.items()},
            "speedup": {k: {b: lat[b][p + "base"]["seconds"] / lat[b][p + row]["seconds"] for b in lat}
                        for k, p in kinds.items()}}


def retime(results: dict, save: Callable[[], None], model: str, args: argparse.Namespace) -> None:
    """Time every row of each seed again, all in ONE interleaved measurement against the dense base: rows
    timed in separate processes on a shared CPU differ by more than a pruning step saves. Torch-Pruning's
    models are pruned again from the base without their fine-tune (the same shapes, so the same latency);
    SABR's is its shrunk model. Accuracy and sizes are left as they were measured."""
    for seed in args.seeds:
        rows = [m for m in results["methods"] if m["seed"] == seed]
        if not rows:
            continue
        s = Seed(model, seed, args)
        models = {"base": s.base}
        for m in rows:
            if m["name"] == "sabr_structured":
                models[m["name"]] = s.structured()
            elif m["name"] == "sabr_unstructured":
                models[m["name"]] = s.unstructured()
            elif m["name"].startswith("torch_pruning_"):
                models[m["name"]] = torch_pruning_channels(s.base, s.example(), _ratio(m["name"]))
        lat = measure_latency(models, s.example(), BATCHES, runs=args.runs, warmup=max(1, args.runs // 10),
                              threads=args.threads)["latency"]
        for m in rows:
            m.update(timing(lat, "base" if m["name"] == "dense" else m["name"]))
        results["timing"] = (f"--retime {time.strftime('%Y-%m-%d')}: each seed's rows timed in one process, "
                             f"interleaved, {args.runs} calls per path and batch size")
        log.info("seed %d: %s", seed, ", ".join(f"{m['name']} {m['speedup']['eager']['1']:.2f}x" for m in rows))
        save()


def accumulate(results: dict, save: Callable[[], None], name: str, seed: int, make: Callable[[], dict]) -> dict:
    """The row of (``name``, ``seed``): the stored one, or ``make()`` appended and saved at once."""
    for m in results["methods"]:
        if (m["name"], m["seed"]) == (name, seed):
            return m
    row = make()
    results["methods"].append(row)
    save()
    return row


def load_results(path: Path, model: str, args: argparse.Namespace) -> dict:
    """The results file of ``model`` (a fresh one when missing); one measured at another image size, thread
    count or ``sabr run`` configuration (``sabr_run``: the structured run's epochs, and the unstructured run's
    ``--epochs-sabr`` when one was given) is refused."""
    sabr_run = {k: getattr(args, k, None) for k in SABR_RUN}
    if getattr(args, "unstructured_epochs_sabr", None) is not None:
        sabr_run["unstructured_epochs_sabr"] = args.unstructured_epochs_sabr
    fresh = {"model": model, "image_size": args.image_size, "threads": args.threads, "sabr_run": sabr_run,
             "methods": []}
    if not path.is_file():
        return fresh
    results = json.loads(path.read_text())
    if (results.get("image_size"), results.get("threads")) != (args.image_size, args.threads):
        raise SystemExit(f"{path} holds results at {results.get('image_size')} px and {results.get('threads')} "
                         f"thread(s), not {args.image_size} and {args.threads}; move it away or pass those values.")
    if not getattr(args, "report", False) and results.get("sabr_run") != sabr_run:
        raise SystemExit(f"{path} holds results of another sabr run configuration ({results.get('sabr_run')}, "
                         f"not {sabr_run}); move it away or pass --out.")
    return results


def check_base(results: dict, row: dict, source: Path) -> None:
    """Refuse ``row`` when ``results`` holds rows of its seed measured against another base (its seed's base
    trained again on another machine: runs repeat exactly only on one machine). Bases are told apart by their
    test accuracy, the one base figure every row records, so two bases with the same test accuracy pass."""
    bases = {m["base_test_accuracy"] for m in results["methods"] if m["seed"] == row["seed"]}
    if bases and row["base_test_accuracy"] not in bases:
        raise SystemExit(f"{source}: seed {row['seed']}'s {row['name']} row was measured against a base of "
                         f"{100 * row['base_test_accuracy']:.2f}% test accuracy, the results file's rows of that seed "
                         f"against {', '.join(f'{100 * b:.2f}%' for b in sorted(bases))}: another base; merge it "
                         "into another --out.")


def merge(paths: list[Path], out: Path, args: argparse.Namespace, prefix: str = "") -> list[tuple[dict, Path]]:
    """Add the rows of other results files (e.g. seeds run side by side, ``--seeds N --out DIR`` per process)
    to the results file of their model in ``out``, each (name, seed) once: rows already there are kept. Every
    file is checked as :func:`load_results` checks the results file, and each row against the base of its
    seed's rows already there (:func:`check_base`). Returns each model's results and path."""
    merged: dict[str, tuple[dict, Path]] = {}
    for part in paths:
        if not part.is_file():
            raise SystemExit(f"{part} does not exist; --merge takes results files this script wrote (--out).")
        model = json.loads(part.read_text()).get("model")
        if model not in merged:
            path = out / f"{prefix}structured-{model}.json"
            merged[model] = (load_results(path, model, args), path)
        results, path = merged[model]
        for row in load_results(part, model, args)["methods"]:
            check_base(results, row, part)
            accumulate(results, partial(write_json, path, results), row["name"], row["seed"], partial(dict, row))
    return list(merged.values())


def bench_model(model: str, args: argparse.Namespace, path: Path) -> dict:
    """Every method row of ``model`` for every seed, resuming from ``path``."""
    results = load_results(path, model, args)
    save = lambda: write_json(path, results)  # noqa: E731
    for seed in args.seeds:
        s = Seed(model, seed, args)
        accumulate(results, save, "dense", seed, lambda: measure(s, "dense", s.base, args.runs))
        if "sabr_structured" in args.methods:
            accumulate(results, save, "sabr_structured", seed,
                       lambda: measure(s, "sabr_structured", s.structured(), args.runs))
        for r in args.ratios if "torch_pruning" in args.methods else ():
            name = f"torch_pruning_{r:g}"
            accumulate(results, save, name, seed, lambda: measure(s, name, s.peer(r), args.runs))
        if "sabr_unstructured" in args.methods:
            accumulate(results, save, "sabr_unstructured", seed,
                       lambda: measure(s, "sabr_unstructured", s.unstructured(), args.runs))
    return results


# --------------------------------------------------------------------------- report
def _family(name: str) -> str:
    return "torch_pruning" if name.startswith("torch_pruning_") else name


def _ratio(name: str) -> float:
    """The channel ratio of a ``torch_pruning_<ratio>`` row."""
    return float(name.rpartition("_")[2])


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * sd:.{digits}f}"


def groups(results: dict) -> dict[str, list[dict]]:
    """Rows per method name: ``dense``, Torch-Pruning's by ratio, then the others in the order first measured."""
    out: dict[str, list[dict]] = {}
    for m in results["methods"]:
        out.setdefault(m["name"], []).append(m)
    order = {"dense": (0, 0.0)} | {n: (1, _ratio(n)) for n in out if _family(n) == "torch_pruning"}
    return dict(sorted(out.items(), key=lambda item: order.get(item[0], (2, 0.0))))


def table(results: dict) -> str:
    """A markdown table, mean ± std over seeds: accuracy, drop, size, MACs, and per runtime and batch size the
    latency of the row's own measurement with the mean speedup over the base measured beside it."""
    head = ["method", "seeds", "test acc (%)", "drop (pt)", "params (M)", "MMACs (dense)"]
    cols = [(k, b) for k in ("eager", "onnxruntime") for b in map(str, BATCHES)]
    head += [f"{k} b{b} ms (speedup)" for k, b in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in groups(results).items():
        cells = [name, str(len(rows)), _mean_std([r["test_accuracy"] for r in rows], 100),
                 _mean_std([r["base_test_accuracy"] - r["test_accuracy"] for r in rows], 100),
                 _mean_std([r["params"] for r in rows], 1e-6), _mean_std([r["macs"] for r in rows], 1e-6, 1)]
        for k, b in cols:
            got = [r for r in rows if b in r["latency_ms"].get(k, {})]
            cells.append(f"{_mean_std([r['latency_ms'][k][b] for r in got], digits=3)} "
                         f"({statistics.mean(r['speedup'][k][b] for r in got):.2f}x)" if got else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairs(results: dict) -> str:
    """Per seed, structured SABR against the Torch-Pruning row of that seed closest to it in parameters (the
    same share gives the same shapes): test accuracy and batch-1 speedups, and the paired difference; a
    markdown table in seed order, empty when no seed has both."""
    lines, diffs = [], []
    ours = sorted((m for m in results["methods"] if m["name"] == "sabr_structured"), key=lambda m: m["seed"])
    for sabr_row in ours:
        peers = [m for m in results["methods"] if m["seed"] == sabr_row["seed"] and _family(m["name"]) == "torch_pruning"]
        if not peers:
            continue
        peer = min(peers, key=lambda m: abs(m["params"] - sabr_row["params"]))
        cells = [str(sabr_row["seed"]), f"{100 * sabr_row['base_test_accuracy']:.2f}"]
        for m in (sabr_row, peer):
            cells.append(f"{m['params'] / 1e6:.2f}M, {100 * m['test_accuracy']:.2f}%, {m['speedup']['eager']['1']:.2f}x"
                         + (f" / {m['speedup']['onnxruntime']['1']:.2f}x" if "onnxruntime" in m["speedup"] else ""))
        diffs.append(sabr_row["test_accuracy"] - peer["test_accuracy"])
        lines.append(f"| {' | '.join(cells)} | {peer['name']} | {100 * diffs[-1]:+.2f} |")
    if not lines:
        return ""
    lines.append(f"| mean of {len(diffs)} | | | | | {_mean_std(diffs, 100)} |")
    head = ("| seed | base test (%) | sabr_structured: params, test, b1 speedup eager / onnxruntime | "
            "nearest Torch-Pruning row: the same | which | sabr - peer (pt) |")
    return "\n".join([head, "|---|---|---|---|---|---|", *lines])


def paired_ms(results: dict, row: dict, kind: str = "eager", batch: str = "1") -> float:
    """``row``'s latency on the scale of its seed's dense row: the dense latency divided by the speedup measured
    in the row's own measurement (latencies of separate measurements on a shared CPU differ by more than the
    speedups of small prunings); the row's own latency when its seed has no dense row."""
    dense = [m for m in results["methods"] if (m["name"], m["seed"]) == ("dense", row["seed"])]
    if not dense:
        return row["latency_ms"][kind][batch]
    return dense[0]["latency_ms"][kind][batch] / row["speedup"][kind][batch]


def plot(results: dict, path: Path, label: str = "") -> None:
    """Pareto plot: test accuracy against batch-1 eager latency (:func:`paired_ms`), means over seeds, one
    series per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    families: dict[str, list[tuple[float, float, str]]] = {}
    for name, rows in groups(results).items():
        point = (statistics.mean(paired_ms(results, r) for r in rows),
                 100 * statistics.mean(r["test_accuracy"] for r in rows), name)
        families.setdefault(_family(name), []).append(point)
    for (family, points), marker in zip(families.items(), "osD^v<>"):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=family)
        for x, y, name in points:
            if name.startswith("torch_pruning_"):
                ax.annotate(f"{_ratio(name):g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel=f"batch-1 latency, eager PyTorch, {results['threads']} thread(s) (ms; dense / paired speedup)",
           ylabel="test accuracy (%)")
    ax.set_title(f"{results['model']} at {results['image_size']} px{label}: accuracy against measured latency",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: dict, json_path: Path, seeds: list[int] | None = None) -> None:
    """Print the table and draw the plot beside the JSON file, of every seed's rows or of ``seeds``' only (the
    plot's name then ends in ``-seeds<N>-<M>...``)."""
    label = ""
    if seeds is not None:
        results = {**results, "methods": [m for m in results["methods"] if m["seed"] in seeds]}
        label = f", seeds {' '.join(map(str, seeds))}"
    print(f"\n## {results['model']} ({results['image_size']} px, {results['threads']} thread(s){label})\n")
    print(table(results))
    paired = pairs(results)
    if paired:
        print(f"\nPer seed, against Torch-Pruning at the nearest size:\n\n{paired}")
    if results["methods"]:
        suffix = "" if seeds is None else "-seeds" + "-".join(map(str, seeds))
        plot(results, json_path.with_name(json_path.stem + suffix + ".png"), label)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, "mobilenet_v2"])
    p.add_argument("--data", default=str(DATA), help="image folder, one sub-folder per class")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="training and timing threads (default: 1)")
    p.add_argument("--seeds", type=int, nargs="+", help=f"seeds to train or time (default: {' '.join(map(str, SEEDS))}); "
                   "with --report, the seeds reported (default: all in the file; the plot's name then names them)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="rows to measure besides dense (default: all); rows already in the results are kept")
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="Torch-Pruning channel ratios")
    p.add_argument("--epochs-base", type=int, help="passed to sabr run (default: sabr's)")
    p.add_argument("--epochs-sabr", type=int, default=SABR_RUN["epochs_sabr"], help="passed to sabr run "
                   "(default: %(default)s)")
    p.add_argument("--sabr-finetune-epochs", type=int, default=SABR_RUN["sabr_finetune_epochs"],
                   help="passed to sabr run as --finetune-epochs (default: %(default)s)")
    p.add_argument("--unstructured-epochs-sabr", type=int, help="the sabr_unstructured run's --epochs-sabr "
                   "(default: sabr's)")
    p.add_argument("--base-from", help="start each sabr run from <this folder>/<model>-s<seed>/base.safetensors, "
                   "the base of an earlier run of this script (skips phase 1)")
    p.add_argument("--finetune-epochs", type=int, help="Torch-Pruning fine-tune epochs (default: as many as "
                   "SABR's phase 2 and fine-tune took for the seed)")
    p.add_argument("--runs", type=int, default=50, help="timed calls per path and batch size (default: 50)")
    p.add_argument("--runs-dir", default="runs/structured", help="where the sabr runs go")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--quick", action="store_true", help="smoke test: " + ", ".join(
        f"{k} {v}" for k, v in QUICK.items()) + "; results go to quick-* files and <runs-dir>-quick")
    p.add_argument("--report", action="store_true", help="only print the table and redraw the plot from the JSON")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="train nothing: add the rows of these results "
                   "files to those in --out (rows already there are kept), then report")
    p.add_argument("--retime", action="store_true", help="train nothing: time every row of a seed again in one "
                   "interleaved measurement (Torch-Pruning's shapes pruned again from the base), then report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prefix = "quick-" if args.quick else ""
    report_seeds = args.seeds  # --report: the seeds asked for, else every seed in the file
    if args.quick:
        vars(args).update(QUICK, runs_dir=f"{args.runs_dir}-quick")
    args.seeds = args.seeds or list(SEEDS)
    if not (args.report or args.merge) and importlib.util.find_spec("torch_pruning") is None:
        raise SystemExit("the Torch-Pruning peer needs the torch-pruning package: pip install 'torch-pruning>=1.6'.")
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.merge:
        for results, path in merge([Path(f) for f in args.merge], Path(args.out), args, prefix):
            report(results, path)
        return 0
    for model in args.models:
        path = Path(args.out) / f"{prefix}structured-{model}.json"
        if args.report:
            report(load_results(path, model, args), path, report_seeds)
            continue
        if args.retime:
            results = load_results(path, model, args)
            retime(results, lambda: write_json(path, results), model, args)
        else:
            start = time.perf_counter()
            results = bench_model(model, args, path)
            log.info("%s: %.0f s", model, time.perf_counter() - start)
        report(results, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
