"""Can the fine-tune's budget ramp remove whole channels by rank where the std rule cannot? (issue #16, a probe)

In a structured run the std rule on channel sizes removes a channel only below ``factor x std`` of its group's
sizes, and on resnet18 the early groups' channels are near-uniform in size (mean size 6 to 25 times the std at
factor 1), so no factor of the grid reaches them. This probe runs the same :class:`sabr.budget.PruneRamp` as
``sabr run --finetune-epochs`` over *fractions* of each group instead: each step removes the lowest-RMS channels
up to the next fraction (a multiple of 8 per group), from a finished structured run's phase-2 model (``sabr``)
or its base (``base``). Validation (the run's budget, 1 point) chooses; test and the shrunk model's batch-1
eager speed-up (interleaved medians, one thread) are recorded. Outside the protocol of ``structured.py``.

    python benchmarks/structured_ramp.py --run RUN --start sabr --epochs 15 --threads 1
    python benchmarks/structured_ramp.py --run RUN --start base --epochs 30 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sabr import load_checkpoint, load_experiment
from sabr.budget import PruneRamp, budget_floor
from sabr.channels import channel_groups, channel_rms, group_parameters
from sabr.checkpoint import write_json
from sabr.experiment import evaluate_split
from sabr.phases import finetune_masked
from sabr.report import structured_figures

FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
"""The ramp's steps: the share of each group's channels removed, lowest root mean square first."""


def probe(run: Path, start: str, epochs: int, max_drop: float = 0.01) -> dict:
    """The ramp from ``run``'s ``start`` checkpoint: its kept fraction, figures and per-epoch rows."""
    exp = load_experiment(run)
    summary = json.loads((run / "summary.json").read_text())
    floor = budget_floor(summary["base"]["val_accuracy"], max_drop)
    model = load_checkpoint(run / f"{start}.safetensors", exp.device)[0]
    groups = channel_groups(model, exp.example_input())

    @torch.no_grad()
    def grow(m: torch.nn.Module, fraction: float) -> None:
        named = dict(m.named_parameters())
        for g in groups:
            drop = torch.argsort(channel_rms(named, g))[:int(fraction * g.channels) // 8 * 8]
            for name in g.parameters:
                named[name][drop] = 0.0

    ramp = PruneRamp.start(model, floor, FRACTIONS, kept_accuracy=evaluate_split(exp, model, exp.val)[1])
    tuned, rows = finetune_masked(exp, model, epochs, params=group_parameters(groups), ramp=ramp, grow=grow)
    return {"run": str(run), "start": start, "epochs": epochs, "floor": floor, "kept_fraction": ramp.kept_factor,
            "kept_epoch": ramp.kept_epoch, "val_accuracy": evaluate_split(exp, tuned, exp.val)[1],
            "test_accuracy": evaluate_split(exp, tuned, exp.test)[1], "base_test_accuracy": summary["base"]["test_accuracy"],
            "rows": [{k: r[k] for k in ("epoch", "val_accuracy", "prune_teta1")} for r in rows],
            "structured": structured_figures(tuned, groups, exp.example_input(), runs=50)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a finished `sabr run --structured` folder")
    p.add_argument("--start", choices=("sabr", "base"), default="sabr", help="the checkpoint the ramp starts from")
    p.add_argument("--epochs", type=int, default=15, help="masked fine-tune epochs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: <run>/structured_ramp-<start>.json)")
    args = p.parse_args(argv)
    if not (args.run / "summary.json").is_file():
        p.error(f"{args.run} is not a finished `sabr run` folder (no summary.json)")
    if args.threads:
        torch.set_num_threads(args.threads)
    r = probe(args.run, args.start, args.epochs)
    s = r["structured"]
    print(f"| {r['start']} | {r['epochs']} | {100 * r['kept_fraction']:.1f}% (epoch {r['kept_epoch']}) | "
          f"{100 * r['val_accuracy']:.2f}% | {100 * r['test_accuracy']:.2f}% ({100 * r['base_test_accuracy']:.2f}%) | "
          f"{s['macs_before'] / 1e6:.1f}M -> {s['macs_after'] / 1e6:.1f}M | {s['speedup_batch1']:.2f}x |")
    write_json(args.out or args.run / f"structured_ramp-{args.start}.json", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
