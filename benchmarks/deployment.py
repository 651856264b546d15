"""Deployment benchmark: file sizes and CPU latency of a run's pruned model, its shrunk copy and sparse kernels.

Usage::

    PYTHONPATH=src python benchmarks/deployment.py --run RUN_DIR [--teta1 0.2 3.0] [--json out.json]

For each ``--teta1`` the run's SABR checkpoint is re-pruned at that factor (``sabr.prune``), then
:func:`sabr.bench_model` measures it. Without ``--teta1`` the run's own pruned checkpoint is used.
Prints one table per model and writes every figure to JSON.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from sabr import bench_model, load_run, prune, sparsity_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--teta1", type=float, nargs="*", default=[])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-density", type=float, default=0.3)
    ap.add_argument("--threads", type=int, help="torch threads while timing (default: torch's choice)")
    ap.add_argument("--json", default="deployment.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    variants = [(t, "sabr") for t in args.teta1] or [(None, "pruned")]
    for teta1, phase in variants:
        model, meta = load_run(args.run, phase)
        if teta1 is not None:
            prune(model, teta1=teta1)
        sp = sparsity_report(model).sparsity
        r = bench_model(model, meta, batch_sizes=tuple(args.batch_sizes), runs=args.runs, warmup=args.warmup,
                        max_density=args.max_density, threads=args.threads)
        r.update({"run": args.run, "teta1": teta1, "sparsity": sp, "model": meta["model"], "torch": torch.__version__})
        results.append(r)
        s = r["sizes"]
        print(f"\n{meta['model']['name']} {meta['model']['image_size']}px, prune teta1 {teta1 or 'run default'}: "
              f"sparsity {100 * sp:.2f}%, MACs -{100 * r['macs_reduction']:.2f}% (ideal {r['ideal_speedup']:.2f}x), "
              f"params {r['params_dense']:,} -> {r['params_shrunk']:,} shrunk, {r['threads']} threads")
        print("| batch | path | median ms | speedup vs dense | ideal | max abs diff |")
        print("|---|---|---|---|---|---|")
        for b, paths in r["latency"].items():
            for name, t in paths.items():
                print(f"| {b} | {name} | {1e3 * t['seconds']:.2f} | {t['speedup']:.2f}x | {r['ideal_speedup']:.2f}x "
                      f"| {r['max_abs_diff'][name]:.1e} |")
        print("| file | bytes | % of dense |\n|---|---|---|")
        for k, v in s.items():
            print(f"| {k} | {v:,} | {100 * v / s['dense']:.1f}% |")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
