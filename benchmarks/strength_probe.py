"""How SABR's fast start was chosen (docs/spec.md, phase 2), on validation only, from a fresh clone.

For every configuration and seed, one base (``--epochs-sabr 0``), then SABR from that base once per
fast-start factor (``--fast-start 1`` is the seed's x1.15 throughout). Every run is ``sabr run`` in its
own process with every other setting at its default. The table and the JSON hold validation figures
only: the pruned sparsity, the budget's chosen model's validation accuracy and its floor. The choice
(:func:`choose`) reads nothing else, and this file never reads a test figure (:data:`READ` is every
key it takes from a run's ``summary.json``; a test checks both).

    python benchmarks/strength_probe.py                  # both configurations, seed 0 (about 40 min)
    python benchmarks/strength_probe.py --seeds 0 1 2
    python benchmarks/strength_probe.py --quick          # tiny digits runs, a minute or two

Writes ``benchmarks/results/strength-probe.json`` (``--quick``: ``<work>/strength-probe-quick.json``)
and prints a Markdown table. Finished runs in ``--work`` (default ``runs/strength_probe``) are reused.
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
NEAR_BEST = 0.01
"""The choice: the smallest factor whose sparsity is within this fraction of the best on every configuration."""

CONFIGS = {
    "fashion-lenet5": dict(base=["--data", FASHION, "--model", "lenet5", "--train-per-class", "1200",
                                 "--epochs-base", "20"], sabr=["--epochs-sabr", "20"]),
    "digits": dict(base=[], sabr=[]),  # every default (60 SABR epochs)
}
QUICK = {"digits-quick": dict(base=["--max-per-class", "40", "--epochs-base", "3"], sabr=["--epochs-sabr", "4"])}

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
    """The smallest factor that, on every configuration, is within the budget on every seed and whose mean
    sparsity is within ``near`` of the best such factor's; ``None`` when no factor qualifies everywhere."""
    qualifies: dict[str, set[float]] = {}
    for config in {r["config"] for r in rows}:
        mine = [r for r in rows if r["config"] == config]
        means = {rate: statistics.mean(r["sparsity"] for r in mine if r["rate"] == rate)
                 for rate in {r["rate"] for r in mine}
                 if all(r["within_budget"] for r in mine if r["rate"] == rate)}
        best = max(means.values(), default=None)
        qualifies[config] = {rate for rate, m in means.items() if best is not None and m >= best - near}
    common = set.intersection(*qualifies.values()) if qualifies else set()
    return min(common, default=None)


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


def probe(configs: dict, seeds: list[int], rates: tuple[float, ...], work: Path, threads: int) -> list[dict]:
    """Every configuration x seed x factor; one row of :func:`val_figures` each, with its command."""
    rows = []
    for name, spec in configs.items():
        for seed in seeds:
            base_dir = work / f"{name}-seed{seed}-base"
            _sabr_run(base_dir, [*spec["base"], "--epochs-sabr", "0", "--seed", str(seed)], threads)
            for rate in rates:
                flags = [*spec["base"], "--base-checkpoint", str(base_dir / "base.safetensors"), *spec["sabr"],
                         "--fast-start", f"{rate:g}", "--seed", str(seed)]
                summary = _sabr_run(work / f"{name}-seed{seed}-fast{rate:g}", flags, threads)
                row = val_figures(json.loads(summary.read_text()))
                rows.append({"config": name, "seed": seed, "rate": rate, **row,
                             "command": " ".join(["sabr", "run", *flags, "--threads", str(threads)])})
    return rows


def markdown(rows: list[dict]) -> str:
    """Mean pruned sparsity and validation accuracy (the floor) per configuration and factor."""
    lines = ["| config | fast start | seeds | pruned sparsity | val accuracy (floor) | within budget |",
             "|---|---|---|---|---|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        for rate in dict.fromkeys(r["rate"] for r in rows if r["config"] == config):
            mine = [r for r in rows if r["config"] == config and r["rate"] == rate]
            mean = lambda key: 100 * statistics.mean(r[key] for r in mine)  # noqa: E731
            lines.append(f"| {config} | {'off (x1.15)' if rate <= 1 else f'x{rate:g}'} | {len(mine)} | "
                         f"{mean('sparsity'):.2f}% | {mean('val_accuracy'):.2f}% ({mean('floor'):.2f}%) | "
                         f"{sum(r['within_budget'] for r in mine)}/{len(mine)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/strength_probe", help="folder for the runs (finished ones are reused)")
    p.add_argument("--json", default=None, help="default: benchmarks/results/strength-probe.json")
    p.add_argument("--quick", action="store_true", help="tiny digits runs only (checks that the script works)")
    args = p.parse_args(argv)
    work = Path(args.work)
    started = time.perf_counter()
    rows = probe(QUICK if args.quick else CONFIGS, args.seeds, tuple(args.rates), work, args.threads)
    chosen = choose(rows)
    out = Path(args.json or (work / "strength-probe-quick.json" if args.quick
                             else HERE / "results" / "strength-probe.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/strength_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text(json.dumps({"command": command.strip(), "rule": " ".join(choose.__doc__.split()),
                               "near_best": NEAR_BEST, "chosen": chosen, "rows": rows,
                               "wall_seconds": round(time.perf_counter() - started, 1),
                               "markdown": markdown(rows)}, indent=1) + "\n")
    print(markdown(rows))
    print(f"\nchosen fast start: {chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
