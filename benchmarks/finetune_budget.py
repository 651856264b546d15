"""Would judging the budget after the masked fine-tune let ``sabr run`` prune further? (issue #13, a probe)

For a finished ``sabr run`` folder, prune its phase-2 model (``sabr.safetensors``) at each factor, fine-tune
the pruned model (masked, ``--epochs`` epochs, as phase 3 does) and report validation accuracy before and after
the fine-tune, against the run's own budget floor. Test accuracy is printed for the record and chooses
nothing. Outside the comparison's protocol: each factor gets its own fine-tune, so more epochs than a run.

    python benchmarks/finetune_budget.py --run RUN --factors 0.1 0.2 0.3 0.5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sabr import load_checkpoint, load_experiment, sparsity_report
from sabr.budget import budget_floor, prune_copy
from sabr.checkpoint import write_json
from sabr.phases import bn_recalibrator, units_of
from sabr.pipeline import evaluate_split, finetune_masked


def probe(run: Path, factors: list[float], epochs: int) -> dict:
    """``{"run", "floor", "rows": [{"factor", "sparsity", "val_before", "val_after", "test"}]}``."""
    exp = load_experiment(run)
    summary = json.loads((run / "summary.json").read_text())
    floor = budget_floor(summary["base"]["val_accuracy"], summary["budget"]["max_drop"])
    model = load_checkpoint(run / "sabr.safetensors", exp.device)[0]
    # pruned and fine-tuned as the run's budget search and phase 3 do: whole channels in structured mode,
    # BatchNorm recalibrated after pruning when the run does it
    units = units_of(exp, model)
    recal = bn_recalibrator(exp) if exp.config.recalibrates else None
    kept_zero = units.parameters
    rows = []
    for factor in factors:
        torch.manual_seed(exp.config.seed)
        pruned, _ = prune_copy(model, factor, exp.config.gamma, units, recal)
        before = evaluate_split(exp, pruned, exp.val)[1]
        tuned, _ = finetune_masked(exp, pruned, epochs, params=kept_zero, progress=False)
        rows.append({"factor": factor, "sparsity": sparsity_report(tuned, exp.config.params).sparsity,
                     "val_before": before, "val_after": evaluate_split(exp, tuned, exp.val)[1],
                     "test": evaluate_split(exp, tuned, exp.test)[1]})
        print(f"| {factor:g} | {100 * rows[-1]['sparsity']:.2f}% | {100 * before:.2f}% / "
              f"{100 * rows[-1]['val_after']:.2f}% | {100 * rows[-1]['test']:.2f}% |", flush=True)
    return {"run": str(run), "floor": floor, "epochs": epochs, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a finished `sabr run` folder")
    p.add_argument("--factors", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5], help="pruning factors")
    p.add_argument("--epochs", type=int, default=5, help="masked fine-tune epochs per factor")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: <run>/finetune_budget.json)")
    args = p.parse_args(argv)
    if not (args.run / "summary.json").is_file():
        p.error(f"{args.run} is not a finished `sabr run` folder (no summary.json)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| factor | sparsity | validation before / after the fine-tune | test |\n|---|---|---|---|")
    results = probe(args.run, args.factors, args.epochs)
    print(f"budget floor (validation): {100 * results['floor']:.2f}%")
    write_json(args.out or args.run / "finetune_budget.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
