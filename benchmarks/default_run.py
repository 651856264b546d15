"""The README's results table: the default ``sabr run`` for several seeds and thread counts, as a fresh machine gives it.

Each run is the README's command (``sabr run``, the embedded digits, every default) with only ``--seed``
and ``--threads`` set, in its own process, so nothing is tuned and nothing is picked: the table shows
the mean and the spread. Results on one machine and thread count are reproducible; another machine or
thread count gives another (equally valid) run, which is why both thread counts are listed.

    python benchmarks/default_run.py                        # seeds 0 1 2, threads 1 and 2 (about 15 min)
    python benchmarks/default_run.py --seeds 0 --threads 1  # one run
    python benchmarks/default_run.py --extra --max-drop 0.002   # the same runs with other settings

Writes ``benchmarks/results/default_run.json`` (or ``--json``) and prints a Markdown table. Finished
runs are kept in ``--work`` (default ``runs/default_run``) and not trained again, so a cut-off
benchmark continues where it stopped.
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


def run_one(work: Path, seed: int, threads: int, extra: list[str]) -> dict:
    """One ``sabr run`` in a fresh process (skipped when its ``summary.json`` exists); its figures."""
    out = work / f"seed{seed}-threads{threads}"
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        cmd = [sys.executable, "-m", "sabr", "run", "--seed", str(seed), "--threads", str(threads),
               "--out", str(out), "--quiet", *(["--overwrite"] if out.exists() else []), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        print(f"seed {seed}, {threads} thread(s): {time.perf_counter() - started:.0f} s", flush=True)
    return figures(json.loads(summary_path.read_text()), seed, threads, extra)


def figures(s: dict, seed: int, threads: int, extra: list[str]) -> dict:
    """The row of one run, from its ``summary.json``."""
    test_images = s["dataset"]["test"]
    drop = s["base"]["test_accuracy"] - s["pruned"]["test_accuracy"]
    return {
        "seed": seed, "threads": threads, "command": " ".join(["sabr", "run", "--seed", str(seed), "--threads",
                                                               str(threads), *extra]),
        "base_test_accuracy": s["base"]["test_accuracy"], "base_val_accuracy": s["base"]["val_accuracy"],
        "base_val_plateau": s["base"].get("val_plateau"), "floor": s["budget"].get("floor"),
        "test_accuracy": s["pruned"]["test_accuracy"], "sparsity": s["pruned"]["sparsity"],
        "test_drop": drop, "test_drop_images": round(drop * test_images), "test_images": test_images,
        "val_drop": s["budget"]["val_drop"], "prune_teta1": s["budget"]["prune_teta1"],
        "within_budget": s["budget"]["within_budget"], "macs_reduction": s["pruned"]["macs_reduction"],
        "sabr_epochs": s["sabr"]["epochs"], "kept_epoch": s["sabr"]["kept_epoch"], "stopped": s["sabr"]["stopped"],
        "frozen": s["sabr"]["frozen"], "tensors": s["sabr"]["tensors"],
        "base_pruned_sparsity": s["base_pruned"]["sparsity"], "base_pruned_test_accuracy": s["base_pruned"]["test_accuracy"],
        "seconds": s["seconds"],
    }


def _mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    mean = statistics.mean(values) * scale
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    """One line per run, then mean ± std over the runs."""
    lines = ["| seed | threads | base test | pruned test | drop (images) | sparsity | base pruned, no SABR | "
             "factor | SABR epochs (kept) | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['threads']} | {100 * r['base_test_accuracy']:.2f}% | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['test_drop_images']} of {r['test_images']} | "
                     f"{100 * r['sparsity']:.2f}% | {100 * r['base_pruned_sparsity']:.2f}% at "
                     f"{100 * r['base_pruned_test_accuracy']:.2f}% | {r['prune_teta1']:g}"
                     f"{'' if r['within_budget'] else ' (none fits)'} | "
                     f"{r['sabr_epochs']} ({r['kept_epoch']}, {r['stopped'].replace('_', ' ')}) | {r['seconds']:.0f} |")
    lines.append(f"| mean ± std | | {_mean_std([r['base_test_accuracy'] for r in rows])}% | "
                 f"{_mean_std([r['test_accuracy'] for r in rows])}% | "
                 f"{_mean_std([r['test_drop_images'] for r in rows], 1, 1)} | "
                 f"{_mean_std([r['sparsity'] for r in rows])}% | "
                 f"{_mean_std([r['base_pruned_sparsity'] for r in rows])}% | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--work", default="runs/default_run", help="folder for the runs (finished ones are reused)")
    p.add_argument("--json", default=str(HERE / "results" / "default_run.json"))
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `sabr run` flags (put last)")
    args = p.parse_args(argv)
    work = Path(args.work)
    rows = [run_one(work, seed, threads, args.extra) for threads in args.threads for seed in args.seeds]
    table = markdown(rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": "python benchmarks/default_run.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "runs": rows, "markdown": table}, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
