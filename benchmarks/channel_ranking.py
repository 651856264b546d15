"""Which channels to remove first: the structured ramp's rank or the weights' root mean square (issue #16).

For each run folder of ``benchmarks/structured.py`` (its ``base`` checkpoint), remove a share of every channel
group by each ranking, re-estimate the BatchNorm statistics (``sabr.phases.bn_recalibrator``) and read the
validation accuracy, with no fine-tune: how much of the network each ranking keeps working.

* ``channel_scale``: :func:`sabr.channels.channel_scale` (the structured fine-tune's ramp's rank): the sum of
  ``|gamma|`` of the group's BatchNorm layers, or where the group has none (vgg11) the norm of every weight that
  writes or reads the channel;
* ``rms``: the root mean square of the weights that write the channel (:func:`sabr.channels.channel_rms`, the
  ramp's first rank);
* ``torch_pruning``: Torch-Pruning's one-shot choice at that ratio (:func:`sabr.baselines.torch_pruning_channels`:
  group L2 magnitude, the peer of ``benchmarks/structured.py`` before its fine-tune), where ``torch-pruning`` is installed.

One table per model, mean and per run. Rows accumulate in ``--out`` per run folder name: measuring some runs
again replaces their rows and keeps those of the others.

    python benchmarks/channel_ranking.py runs/structured/resnet18-s{0,1,2} runs/structured/vgg11-s{0,1,2}
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch

import sabr
from sabr.baselines import torch_pruning_channels
from sabr.channels import ChannelGroup, channel_groups, channel_rms, channel_scale
from sabr.experiment import evaluate_split
from sabr.phases import bn_recalibrator

ROOT = Path(__file__).resolve().parents[1]
SHARES = (0.125, 0.25, 0.5, 0.75)


def rms(model: torch.nn.Module, group: ChannelGroup) -> torch.Tensor:
    """The ramp's rank before: each channel's weights' root mean square alone."""
    return channel_rms(dict(model.named_parameters()), group)


RANKINGS = {"channel_scale": channel_scale, "rms": rms}
"""Name -> ``rank(model, group)`` for :func:`sabr.prune_channel_share`."""


def measure(run: Path, shares: tuple[float, ...]) -> list[dict]:
    """One row per (share, ranking) of the run's base model: validation accuracy after pruning and recalibration."""
    exp = sabr.load_experiment(run)
    base = sabr.load_run(run, "base")[0].eval()
    example = exp.example_input().cpu()
    groups = channel_groups(base, example)
    recalibrate = bn_recalibrator(exp)
    model_name = exp.config.model
    with_peer = importlib.util.find_spec("torch_pruning") is not None

    def pruned(share: float):
        """(ranking, the base with ``share`` of every group removed by it)."""
        for name, rank in RANKINGS.items():
            model = copy.deepcopy(base)
            sabr.prune_channel_share(model, groups, share, rank)
            yield name, model
        if with_peer:
            yield "torch_pruning", torch_pruning_channels(base, example, share)

    rows = [{"run": run.name, "model": model_name, "share": 0.0, "ranking": "none",
             "val_accuracy": evaluate_split(exp, base, exp.val)[1]}]
    for share in shares:
        for name, model in pruned(share):
            recalibrate(model)
            rows.append({"run": run.name, "model": model_name, "share": share, "ranking": name,
                         "val_accuracy": evaluate_split(exp, model, exp.val)[1]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders holding a base checkpoint (benchmarks/structured.py's)")
    p.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "channel-ranking.json"))
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not (Path(r) / "base.safetensors").is_file()]
    if missing:
        p.error(f"no base checkpoint in {', '.join(missing)}: pass run folders of benchmarks/structured.py")
    torch.set_num_threads(args.threads)
    rows = [row for run in args.runs for row in measure(Path(run), tuple(args.shares))]
    out = Path(args.out)
    measured = {r["run"] for r in rows}
    command = " ".join(["python benchmarks/channel_ranking.py", *(argv if argv is not None else sys.argv[1:])])
    commands = [command]
    if out.is_file():  # the rows of runs not measured this time are kept, with the commands that measured them
        old = json.loads(out.read_text())
        rows = [r for r in old["rows"] if r["run"] not in measured] + rows
        commands = old.get("commands", [old.get("command")]) + commands
    rankings = list(dict.fromkeys(r["ranking"] for r in rows if r["ranking"] != "none"))
    for model in dict.fromkeys(r["model"] for r in rows):
        print(f"\n{model}: validation % after removing a share of every group, mean (per run), no fine-tune\n")
        print("| share | " + " | ".join(rankings) + " |")
        print("|---|" + "---|" * len(rankings))
        for share in sorted({r["share"] for r in rows if r["model"] == model and r["share"] > 0}):
            cells = []
            for name in rankings:
                accs = [100 * r["val_accuracy"] for r in rows
                        if (r["model"], r["share"], r["ranking"]) == (model, share, name)]
                cells.append(f"{statistics.mean(accs):.1f} ({' / '.join(f'{a:.1f}' for a in accs)})" if accs else "-")
            print(f"| {100 * share:g}% | " + " | ".join(cells) + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "commands": commands, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
