"""How two of ``sabr run``'s defaults were chosen, on validation only, from a fresh clone: SABR's fast start
(docs/spec.md, phase 2) and phase 4's pruning ramp (docs/spec.md, phase 4).

For every configuration and seed, one base (``--epochs-sabr 0``), then ``sabr run`` from that base once per
value of the knob: ``fast_start`` tries ``--fast-start`` factors (1 is the seed's x1.15 throughout; phase 4 off,
as when it was chosen), ``ramp`` tries phase 4's epochs (a configuration with a fixed total gives phase 2 the
rest: 20 = 20 + 0, 15 + 5, 10 + 10). Every run is ``sabr run`` in its own process with every other setting at
its default. The table and the JSON hold validation figures only: the pruned sparsity, the budget's chosen
model's validation accuracy and its floor. The choices (:func:`choose`, :func:`choose_sparsest`) read nothing
else, and this file never reads a test figure (:data:`READ` is every key it takes from a run's
``summary.json``; a test checks both).

    python benchmarks/strength_probe.py                  # the fast start: LeNet-5 and digits, seed 0 (~40 min)
    python benchmarks/strength_probe.py --knob ramp      # the ramp: LeNet-5, ResNet-20 and digits (~70 min)
    python benchmarks/strength_probe.py --seeds 0 1 2
    python benchmarks/strength_probe.py --quick          # tiny digits runs, a minute or two

Writes ``benchmarks/results/strength-probe.json`` (``--knob ramp``: ``ramp-probe.json``; ``--quick``:
``<work>/<knob>-probe-quick.json``) and prints a Markdown table. Finished runs in ``--work`` (default
``runs/strength_probe``) are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FASHION = "/usr/share/datasets/fashion-mnist"
RATES = (1.0, 1.5, 2.0, 3.0)
"""Fast-start factors tried; 1 is the seed's rule (x1.15 from the first epoch)."""
RAMPS = (0, 5, 10)
"""Phase 4's epochs tried (taken from phase 2's where a configuration fixes the total)."""
NEAR_BEST = 0.01
"""The fast start's choice: the smallest factor whose sparsity is within this fraction of the best everywhere."""

CONFIGS = {
    "fashion-lenet5": dict(base=["--data", FASHION, "--model", "lenet5", "--train-per-class", "1200",
                                 "--epochs-base", "20"], total=20),
    "fashion-resnet20": dict(base=["--data", FASHION, "--model", "resnet20", "--image-size", "28",
                                   "--train-per-class", "600", "--val-per-class", "200", "--epochs-base", "20"],
                             total=20),
    "digits": dict(base=[], total=None),  # every default (60 SABR epochs; the ramp's come on top)
}
QUICK = {"digits-quick": dict(base=["--max-per-class", "40", "--epochs-base", "3"], total=4)}


def knob_flags(knob: str, value: float, total: int | None) -> list[str]:
    """The flags of one probe run after its base: ``total`` is phase 2's and phase 4's epochs together
    (``None``: phase 2 at its default, phase 4's epochs on top)."""
    phase2 = [] if total is None else ["--epochs-sabr", str(total - (int(value) if knob == "ramp" else 0))]
    if knob == "ramp":
        return [*phase2, "--finetune-epochs", str(int(value))]
    return [*phase2, "--finetune-epochs", "0", "--fast-start", f"{value:g}"]


READ = (("pruned", "sparsity"), ("budget", "val_accuracy"), ("budget", "floor"), ("budget", "within_budget"),
        ("budget", "prune_teta1"), ("sabr", "epochs"), ("sabr", "frozen"), ("sabr", "tensors"), ("seconds",))
"""Every key path read from a run's ``summary.json``: validation figures and sizes, never a test figure."""
assert not any("test" in part for path in READ for part in path), "the probe must not read a test figure"


def _get(summary: dict, path: tuple[str, ...]):
    for key in path:
        summary = summary[key]
    return summary


def val_figures(summary: dict) -> dict:
    """The row of one SABR run: only the keys in :data:`READ`, named by their last part."""
    return {path[-1]: _get(summary, path) for path in READ}


def choose(rows: list[dict], near: float = NEAR_BEST) -> float | None:
    """The smallest value that, on every configuration, is within the budget on every seed and whose mean
    sparsity is within ``near`` of the best such value's; ``None`` when no value qualifies everywhere."""
    qualifies: dict[str, set[float]] = {}
    for config, means in _qualifying_means(rows).items():
        best = max(means.values(), default=None)
        qualifies[config] = {value for value, m in means.items() if best is not None and m >= best - near}
    common = set.intersection(*qualifies.values()) if qualifies else set()
    return min(common, default=None)


def choose_sparsest(rows: list[dict]) -> float | None:
    """The value within the budget on every configuration and seed with the highest mean sparsity over the
    configurations, the higher mean validation accuracy breaking a tie (to 0.01 points); ``None`` when none is."""
    means = _qualifying_means(rows)
    common = set.intersection(*(set(m) for m in means.values())) if means else set()
    val = _qualifying_means(rows, "val_accuracy")
    score = {v: (round(statistics.mean(means[c][v] for c in means), 4), statistics.mean(val[c][v] for c in val))
             for v in common}
    return max(score, key=score.get, default=None)


def _qualifying_means(rows: list[dict], key: str = "sparsity") -> dict[str, dict[float, float]]:
    """Per configuration, the mean ``key`` of every value within the budget on every seed."""
    out = {}
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        out[config] = {value: statistics.mean(r[key] for r in mine if r["value"] == value)
                       for value in dict.fromkeys(r["value"] for r in mine)
                       if all(r["within_budget"] for r in mine if r["value"] == value)}
    return out


KNOBS = {"fast_start": dict(values=RATES, configs=("fashion-lenet5", "digits"), choose=choose,
                            json="strength-probe.json"),
         "ramp": dict(values=RAMPS, configs=tuple(CONFIGS), choose=choose_sparsest, json="ramp-probe.json")}
"""Each knob: the values tried, the configurations, the rule that chooses, the results file."""


def _sabr_run(out: Path, flags: list[str], threads: int) -> Path:
    """``sabr run`` with ``flags`` into ``out`` in a fresh process, unless its ``summary.json`` exists."""
    summary = out / "summary.json"
    if not summary.is_file():
        cmd = [sys.executable, "-m", "sabr", "run", *flags, "--threads", str(threads), "--out", str(out), "--quiet",
               *(["--overwrite"] if out.exists() else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        print(f"{out.name}: {time.perf_counter() - started:.0f} s", flush=True)
    return summary


def probe(configs: dict, knob: str, seeds: list[int], values: tuple[float, ...], work: Path,
          threads: int) -> list[dict]:
    """Every configuration x seed x value of ``knob``; one row of :func:`val_figures` each, with its command."""
    rows = []
    for name, spec in configs.items():
        for seed in seeds:
            base_dir = work / f"{name}-seed{seed}-base"
            _sabr_run(base_dir, [*spec["base"], "--epochs-sabr", "0", "--seed", str(seed)], threads)
            for value in values:
                flags = [*spec["base"], "--base-checkpoint", str(base_dir / "base.safetensors"),
                         *knob_flags(knob, value, spec["total"]), "--seed", str(seed)]
                tag = f"fast{value:g}" if knob == "fast_start" else f"ramp{value:g}"
                summary = _sabr_run(work / f"{name}-seed{seed}-{tag}", flags, threads)
                row = val_figures(json.loads(summary.read_text()))
                rows.append({"config": name, "seed": seed, "knob": knob, "value": value, **row,
                             "command": " ".join(["sabr", "run", *flags, "--threads", str(threads)])})
    return rows


def _label(knob: str, value: float) -> str:
    if knob == "ramp":
        return f"{value:g} ramp epochs"
    return "off (x1.15)" if value <= 1 else f"x{value:g}"


def markdown(rows: list[dict]) -> str:
    """Mean pruned sparsity and validation accuracy (the floor) per configuration and value."""
    lines = ["| config | value | seeds | pruned sparsity | val accuracy (floor) | within budget |",
             "|---|---|---|---|---|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        for value in dict.fromkeys(r["value"] for r in rows if r["config"] == config):
            mine = [r for r in rows if r["config"] == config and r["value"] == value]
            mean = lambda key: 100 * statistics.mean(r[key] for r in mine)  # noqa: E731
            lines.append(f"| {config} | {_label(mine[0]['knob'], value)} | {len(mine)} | "
                         f"{mean('sparsity'):.2f}% | {mean('val_accuracy'):.2f}% ({mean('floor'):.2f}%) | "
                         f"{sum(r['within_budget'] for r in mine)}/{len(mine)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--knob", choices=list(KNOBS), default="fast_start", help="the default probed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--values", type=float, nargs="+", help="the knob's values (default: its own)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/strength_probe", help="folder for the runs (finished ones are reused)")
    p.add_argument("--json", default=None, help="default: benchmarks/results/<the knob's file>")
    p.add_argument("--quick", action="store_true", help="tiny digits runs only (checks that the script works)")
    args = p.parse_args(argv)
    knob, work = KNOBS[args.knob], Path(args.work)
    configs = QUICK if args.quick else {name: CONFIGS[name] for name in knob["configs"]}
    started = time.perf_counter()
    rows = probe(configs, args.knob, args.seeds, tuple(args.values or knob["values"]), work, args.threads)
    chosen = knob["choose"](rows)
    out = Path(args.json or (work / f"{args.knob}-probe-quick.json" if args.quick else HERE / "results" / knob["json"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/strength_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text(json.dumps({"command": command.strip(), "knob": args.knob,
                               "rule": " ".join(knob["choose"].__doc__.split()), "near_best": NEAR_BEST,
                               "chosen": chosen, "rows": rows, "wall_seconds": round(time.perf_counter() - started, 1),
                               "markdown": markdown(rows)}, indent=1) + "\n")
    print(markdown(rows))
    print(f"\nchosen {args.knob}: {chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
