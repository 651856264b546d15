"""Structured SABR against Torch-Pruning's counterparts on Fashion-MNIST's ResNet-20: issue 34's protocol
(docs/benchmarks.md, "Structured protocol"), from scratch by one command in at most 2 hours on a 2-core machine.

Per seed (``SEEDS``), from the base of ``compare.py``'s ``fashion-resnet20`` configuration (the same data, split
sizes and 20-epoch phase 1, in the same ``--bases`` folder: trained here when compare.py has not):

* ``dense``: the base.
* ``sabr_structured``: ``sabr run --structured`` with the protocol's flags only (data, model, image size, split
  sizes, the base, seed, threads, device, out); its ``pruned`` model made physically smaller (:func:`sabr.shrink`).
* ``torch_pruning_<importance>`` (:data:`sabr.channel_peers.IMPORTANCES`: magnitude, bn_scale, taylor): the base
  cut in one shot to sabr_structured's shape on the same seed (every layer's output channels), then fine-tuned
  (:func:`sabr.phases.finetune_masked`) for as many epochs as SABR's run trained after the base.
* ``torch_pruning_groupnorm``: Torch-Pruning's ``GroupNormPruner``, its sparse training for half of those epochs,
  the cut to the same shape, the fine-tune for the other half (:func:`sabr.channel_peers.train_groupnorm`); its
  regulariser ``reg`` tried among ``GROUPNORM_REGS`` on the first seed and chosen by validation accuracy.

Every row keeps its best validation epoch, with the run's optimizer, phase-2 learning rate and schedule; the
test split is read once per final model. After all training, each seed's models are timed together, in this
process, interleaved, at batch 1 and 32, eager and in ONNX Runtime, one thread (:func:`sabr.bench.measure_latency`).

``--recipe`` decides, on validation only and before the comparison, what ``sabr run --structured`` does by
default: ``RECIPES`` on the first seed, the one that removes the most MACs within the budget on validation.

    python benchmarks/structured.py --recipe    # the default recipe's decision (first seed, validation; ~15 min)
    python benchmarks/structured.py             # the comparison, seeds 0-2, two jobs (~1 h with compare's bases)
    python benchmarks/structured.py --quick     # tiny digits runs: a check of the code, a minute
    python benchmarks/structured.py --report    # tables and plot of what is there

Sign-language results of the earlier protocol (resnet18, vgg11, mobilenet_v2 at 32 px) are in
``benchmarks/results/archive/`` and docs/archive/benchmarks-structured-sign-language.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

try:  # the comparison's bases, scheduler and statistics (compare.py, beside this file)
    import compare
except ImportError:  # imported as benchmarks.structured (the tests run from the checkout's root)
    from benchmarks import compare
from sabr import RunConfig, count_macs, load_checkpoint, load_model, load_run, save_shrunk, shrink
from sabr.bench import measure_latency
from sabr.channel_peers import IMPORTANCES, out_channels, torch_pruning_channels, train_groupnorm
from sabr.checkpoint import write_json
from sabr.phases import finetune_masked
from sabr.pipeline import evaluate_split

log = logging.getLogger("structured")

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = "2.0.0"
"""2.0.0 (issue 34): Fashion-MNIST ResNet-20, three Torch-Pruning importances and GroupNormPruner at SABR's shape.
1.x (issue 16): sign-language photos, results/archive/."""
CONFIG = "fashion-resnet20"
SEEDS = (0, 1, 2)
GROUPNORM_REGS = (1e-4, 5e-4, 2e-3)
BATCHES = (1, 32)
RUNS = 50
RECIPE_EPOCHS = 20
RECIPES = {"ramp": dict(epochs_sabr=0, finetune_epochs=RECIPE_EPOCHS),
           "sabr_then_ramp": dict(epochs_sabr=RECIPE_EPOCHS // 2, finetune_epochs=RECIPE_EPOCHS // 2),
           "sabr": dict(epochs_sabr=RECIPE_EPOCHS, finetune_epochs=0)}
"""The candidates for ``sabr run --structured``'s default, each 20 epochs after the base: the fine-tune's channel
share ramp alone, SABR's group penalty then the ramp, the group penalty then the budget search alone."""
QUICK = dict(data=dict(data="digits", model="resnet20", image_size=8, max_per_class=12), epochs_base=1,
             flags=dict(epochs_sabr=1, finetune_epochs=1), seeds=(0, 1), runs=3)


def _spec(quick: bool) -> dict:
    return QUICK if quick else {**compare.CONFIGS[CONFIG], "flags": {}}


def _weights(folder: Path, name: str, reg: float | None = None) -> Path:
    """Where a row's model is saved: ``<name>.safetensors``, a GroupNormPruner trial's ``<name>-<reg>.safetensors``."""
    return folder / f"{name}{'' if reg is None else f'-{reg:g}'}.safetensors"


def _size(model: torch.nn.Module, side: int) -> dict:
    """Parameters and dense MACs per image of ``model`` at ``side`` pixels."""
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.zeros(1, conv.in_channels, side, side)
    return {"params": sum(p.numel() for p in model.parameters()), "macs": int(count_macs(model.cpu(), x).macs_dense)}


# --------------------------------------------------------------------------- the tasks (each returns a JSON dict)
def task_sabr(spec: dict, seed: int, folder: Path, threads: int | None, device: str, base: str,
              name: str = "sabr_structured", flags: dict | None = None) -> dict:
    """``sabr run --structured`` from the seed's base (protocol flags, plus ``flags`` for a recipe candidate),
    continued when cut off; its result made physically smaller and saved as ``<name>.safetensors``."""
    cfg = RunConfig(**spec["data"], structured=True, base_checkpoint=base, seed=seed, threads=threads,
                    device=device, out=str(folder / name), **{**spec["flags"], **(flags or {})})
    summary = compare.run_or_read(cfg)
    model, meta = load_run(cfg.out, "pruned")
    side = meta["model"]["image_size"]
    small = shrink(model.cpu().eval(), torch.zeros(2, meta["model"]["in_chans"], side, side))[0]
    save_shrunk(small, _weights(folder, name), meta)
    return {"val_accuracy": summary["budget"]["val_accuracy"], "within_budget": summary["budget"]["within_budget"],
            "test_accuracy": summary["pruned"]["test_accuracy"], "macs_reduction": summary["pruned"]["macs_reduction"],
            "epochs": summary["sabr"]["epochs"] + int(summary["pruned"].get("finetune_epochs") or 0),
            "channels": out_channels(small), **_size(small, side), "command": cfg.command() + " --quiet"}


def task_peer(spec: dict, seed: int, folder: Path, threads: int | None, device: str, base: str, name: str,
              epochs: int, reg: float | None = None, test: bool = True) -> dict:
    """A Torch-Pruning row cut to sabr_structured's shape: one-shot with an importance, or GroupNormPruner with
    ``reg`` (``test=False``: a trial, validation only). Saved as ``<name>[-<reg>].safetensors``."""
    exp = compare._exp(spec, seed, threads, device)
    start = load_checkpoint(base, exp.device)[0]
    like = load_model(_weights(folder, "sabr_structured"))[0]
    torch.manual_seed(seed)
    importance = name.removeprefix("torch_pruning_")
    if importance == "groupnorm":
        model = train_groupnorm(exp, start, epochs, like=like, reg=reg)[0]
        call = f"sabr.channel_peers.train_groupnorm(exp, base, {epochs}, like=sabr_structured, reg={reg:g})"
    else:
        model = torch_pruning_channels(start, exp.example_input().repeat(2, 1, 1, 1), importance=importance,
                                       like=like, exp=exp)
        model = finetune_masked(exp, model.to(exp.device), epochs)[0]
        call = (f"sabr.phases.finetune_masked(exp, sabr.channel_peers.torch_pruning_channels(base, x, "
                f"importance='{importance}', like=sabr_structured, exp=exp), {epochs})")
    save_shrunk(model, _weights(folder, name, reg), exp.metadata("pruned"))
    row = {"val_accuracy": evaluate_split(exp, model, exp.val)[1], "reg": reg, **_size(model, exp.preprocess.image_size), "command": call}
    if test:
        row["test_accuracy"] = evaluate_split(exp, model, exp.test)[1]
    return row


def task_final(spec: dict, seed: int, folder: Path, threads: int | None, device: str, trial: dict) -> dict:
    """The chosen GroupNormPruner trial's one test reading."""
    exp = compare._exp(spec, seed, threads, device)
    model = load_model(_weights(folder, "torch_pruning_groupnorm", trial["reg"]), exp.device)[0]
    return {**trial, "test_accuracy": evaluate_split(exp, model, exp.test)[1]}


# --------------------------------------------------------------------------- the schedule
class Plan:
    """The protocol's tasks (``recipe``: the recipe candidates of the first seed instead), each with its JSON file
    in ``work``; :meth:`tasks` lists those whose inputs exist (the interface of ``compare.execute``)."""

    def __init__(self, spec: dict, work: Path, bases: Path, threads: int | None, device: str, seeds: tuple,
                 recipe: bool = False):
        self.spec, self.work, self.bases, self.threads, self.device = spec, work, bases, threads, device
        self.seeds, self.recipe = seeds, recipe

    def folder(self, seed: int) -> Path:
        return self.work / f"seed{seed}"

    def base(self, seed: int) -> Path:
        return self.bases / f"seed{seed}"

    def read(self, path: Path) -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    def trials(self, seed: int) -> tuple[list[float], list[dict]]:
        """GroupNormPruner's ``reg`` values for this seed (the grid on the first, its choice later), trials done."""
        if seed == self.seeds[0]:
            regs = list(GROUPNORM_REGS)
        else:
            pick = self.chosen(self.seeds[0])
            regs = [] if pick is None else [pick["reg"]]
        done = [self.read(self.folder(seed) / f"result-trial-groupnorm-{r:g}.json") for r in regs]
        return regs, [t for t in done if t is not None]

    def chosen(self, seed: int) -> dict | None:
        regs, done = self.trials(seed)
        return max(done, key=lambda t: (t["val_accuracy"], -t["reg"])) if regs and len(done) == len(regs) else None

    def tasks(self) -> list:
        out = []
        for seed in (self.seeds[:1] if self.recipe else self.seeds):
            out += self._seed_tasks(seed)
        return [t for t in out if not t[0].is_file()]

    def _seed_tasks(self, seed: int) -> list:
        base, folder = self.base(seed), self.folder(seed)
        if not (base / "result-base.json").is_file():
            return [(base / "result-base.json", compare.task_base, (self.spec, seed, base, self.threads, self.device), {})]
        common = (self.spec, seed, folder, self.threads, self.device, str(base / "base.safetensors"))
        if self.recipe:
            return [(folder / f"result-recipe-{n}.json", task_sabr, common, {"name": f"recipe-{n}", "flags": f})
                    for n, f in RECIPES.items()]
        sabr = self.read(folder / "result-sabr_structured.json")
        if sabr is None:
            return [(folder / "result-sabr_structured.json", task_sabr, common, {})]
        epochs = sabr["epochs"]
        todo = [(folder / f"result-torch_pruning_{i}.json", task_peer, common, {"name": f"torch_pruning_{i}", "epochs": epochs})
                for i in IMPORTANCES]
        regs, done = self.trials(seed)
        todo += [(folder / f"result-trial-groupnorm-{r:g}.json", task_peer, common,
                  {"name": "torch_pruning_groupnorm", "epochs": epochs, "reg": r, "test": False}) for r in regs]
        if regs and len(done) == len(regs):
            todo.append((folder / "result-torch_pruning_groupnorm.json", task_final, common[:5], {"trial": self.chosen(seed)}))
        return todo


# --------------------------------------------------------------------------- timing, results, report
def time_seed(plan: Plan, seed: int, runs: int) -> dict:
    """Every model of ``seed`` timed in one interleaved measurement against the dense base (nothing else should
    run): ``{name: {"latency_ms", "speedup"}}``."""
    folder = plan.folder(seed)
    models = {"dense": load_checkpoint(plan.base(seed) / "base.safetensors", "cpu")[0].eval()}
    for name in ("sabr_structured", *(f"torch_pruning_{i}" for i in IMPORTANCES)):
        models[name] = load_model(_weights(folder, name))[0]
    reg = plan.read(folder / "result-torch_pruning_groupnorm.json")["reg"]
    models["torch_pruning_groupnorm"] = load_model(_weights(folder, "torch_pruning_groupnorm", reg))[0]
    side = plan.spec["data"]["image_size"]
    x = torch.zeros(1, next(models["dense"].parameters()).shape[1], side, side)
    lat = measure_latency(models, x, BATCHES, runs=runs, warmup=max(1, runs // 10), threads=1)["latency"]
    out = {}
    for name in models:  # measure_latency's eager paths are the keys, its ONNX Runtime paths ort_<key>
        kinds = {k: p for k, p in {"eager": "", "onnxruntime": "ort_"}.items() if p + name in lat["1"]}
        out[name] = {"latency_ms": {k: {b: 1e3 * lat[b][p + name]["seconds"] for b in lat} for k, p in kinds.items()},
                     "speedup": {k: {b: lat[b][p + "dense"]["seconds"] / lat[b][p + name]["seconds"] for b in lat}
                                 for k, p in kinds.items()}}
    return out


def entries(plan: Plan) -> list[dict]:
    """The ``methods`` entries (issue 34's schema) from the task and timing files."""
    methods = []
    for seed in plan.seeds:
        folder, base = plan.folder(seed), plan.read(plan.base(seed) / "result-base.json")
        timing = plan.read(folder / "result-timing.json") or {}
        rows = {"dense": None, "sabr_structured": plan.read(folder / "result-sabr_structured.json")}
        rows |= {f"torch_pruning_{i}": plan.read(folder / f"result-torch_pruning_{i}.json") for i in (*IMPORTANCES, "groupnorm")}
        if base is None or rows["sabr_structured"] is None:
            continue
        dense_size = _size(load_checkpoint(plan.base(seed) / "base.safetensors", "cpu")[0], plan.spec["data"]["image_size"])
        for name, r in rows.items():
            if name != "dense" and r is None:
                continue
            r = r or {"val_accuracy": base["val_accuracy"], "test_accuracy": base["test_accuracy"], **dense_size,
                      "command": f"compare.task_base (phase 1 of sabr run, {base['epochs']} epochs)"}
            importance = name.removeprefix("torch_pruning_") if name.startswith("torch_pruning_") else None
            methods.append({"name": name, "seed": seed, "importance": importance, "params": r["params"],
                            "macs": r["macs"], "val_accuracy": r["val_accuracy"], "test_accuracy": r["test_accuracy"],
                            "base_test_accuracy": base["test_accuracy"], **timing.get(name, {}),
                            "macs_reduction_x": dense_size["macs"] / r["macs"], "command": r["command"],
                            **({"reg": r["reg"]} if r.get("reg") is not None else {})})
    return methods


def paired(methods: list[dict], test_images: int) -> list[dict]:
    """sabr_structured minus each Torch-Pruning row, same seed: test accuracy with a 95% t interval."""
    peers = [m for m in methods if m["name"] != "dense"]
    return compare.paired(peers, test_images, ours="sabr_structured", keys=("test_accuracy",))


def best_peer(methods: list[dict]) -> str | None:
    """The Torch-Pruning row with the best mean validation accuracy: "best" decided on validation."""
    vals: dict[str, list[float]] = {}
    for m in methods:
        if m["name"].startswith("torch_pruning_"):
            vals.setdefault(m["name"], []).append(m["val_accuracy"])
    return max(vals, key=lambda n: statistics.mean(vals[n])) if vals else None


def table(results: dict) -> str:
    """Markdown: mean ± std per row over seeds, then sabr_structured minus each Torch-Pruning row."""
    groups: dict[str, list[dict]] = {}
    for m in results["methods"]:
        groups.setdefault(m["name"], []).append(m)
    cols = [(k, b) for k in ("eager", "onnxruntime") for b in map(str, BATCHES)]
    lines = ["| row | seeds | params (k) | MMACs | val % | test % | drop (pt) | "
             + " | ".join(f"{k} b{b} speed-up" for k, b in cols) + " |", "|---" * (7 + len(cols)) + "|"]
    for name, ms in groups.items():
        def over(value, *scale) -> str:  # mean ± std of value(m) over this row's seeds
            return compare.mean_std([value(m) for m in ms], *scale)

        timed = all("speedup" in m for m in ms)
        speed = [over(lambda m: m["speedup"][k][b], 1) + "x" if timed else "-" for k, b in cols]
        figures = [over(lambda m: m["params"], 1e-3, 1), over(lambda m: m["macs"], 1e-6),
                   over(lambda m: m["val_accuracy"]), over(lambda m: m["test_accuracy"]),
                   over(lambda m: m["base_test_accuracy"] - m["test_accuracy"])]
        lines.append(f"| {name} | {len(ms)} | " + " | ".join(figures + speed) + " |")
    lines += ["", "| sabr_structured minus | Δ test (pt) [95% CI] | images | verdict (test) |", "|---|---|---|---|"]
    for p in results["paired"]:
        a = p["test_accuracy"]
        lines.append(f"| {p['method']} | {100 * a['mean']:+.2f} [{100 * a['low']:+.2f}, {100 * a['high']:+.2f}] | "
                     f"{a['images']:+g} | {a['verdict']} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Test accuracy against batch-1 eager speed-up, mean ± std over seeds, one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(m["name"] for m in results["methods"]):
        ms = [m for m in results["methods"] if m["name"] == name and "speedup" in m]
        if not ms:
            continue
        acc = [100 * m["test_accuracy"] for m in ms]
        ax.errorbar(statistics.mean(m["speedup"]["eager"]["1"] for m in ms), statistics.mean(acc),
                    yerr=statistics.stdev(acc) if len(acc) > 1 else 0, capsize=3, ls="", label=name,
                    marker="*" if name == "sabr_structured" else "o", ms=10 if name == "sabr_structured" else 5)
    ax.set_xlabel("batch-1 speed-up over the dense base, eager PyTorch, 1 thread (x)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"{results['config']} (protocol {results['protocol']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_results(plan: Plan, path: Path, command: str, wall: float) -> dict:
    methods = entries(plan)
    before = json.loads(path.read_text()) if path.is_file() else {}
    earlier = before.get("wall_seconds", 0.0) if before.get("command") == command else 0.0
    base = plan.read(plan.base(plan.seeds[0]) / "result-base.json") or {"test": 10000}
    results = {"config": path.stem, "model": plan.spec["data"]["model"], "image_size": plan.spec["data"]["image_size"],
               "threads": 1,
               "command": command, "protocol": PROTOCOL,
               "protocol_commit": before.get("protocol_commit") or compare.protocol_commit("benchmarks/structured.py",
                                                                                       "docs/benchmarks.md"),
               "wall_seconds": round(earlier + wall, 1), "machine": compare.machine(), "spec": plan.spec,
               "groupnorm_regs": GROUPNORM_REGS, "best_peer_on_validation": best_peer(methods), "methods": methods,
               "paired": paired(methods, base["test"])}
    write_json(path, results)
    return results


RECIPE_RULE = ("within the budget on validation, the most MACs removed; within one point of that, the better "
               "validation accuracy; then the fewer epochs trained")


def recipe_choice(plan: Plan) -> dict:
    """Each candidate's validation figures and the choice by :data:`RECIPE_RULE`."""
    rows = {n: plan.read(plan.folder(plan.seeds[0]) / f"result-recipe-{n}.json") for n in RECIPES}
    ok = {n: r for n, r in rows.items() if r and r["within_budget"]} or {n: r for n, r in rows.items() if r}
    top = max(r["macs_reduction"] for r in ok.values())
    pick = max((n for n, r in ok.items() if r["macs_reduction"] >= top - 0.01),
               key=lambda n: (ok[n]["val_accuracy"], -ok[n]["epochs"]))
    return {"seed": plan.seeds[0], "recipes": RECIPES, "rule": RECIPE_RULE,
            "candidates": {n: {k: r[k] for k in ("within_budget", "val_accuracy", "macs_reduction", "epochs",
                                                 "params", "macs", "command")} for n, r in rows.items() if r},
            "chosen": pick}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", action="store_true", help="decide the default recipe on validation (first seed)")
    p.add_argument("--quick", action="store_true", help="tiny digits runs: a check of the code")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the protocol's, 0 1 2)")
    p.add_argument("--jobs", type=int, default=2, help="tasks at a time, each in its own process (1: this one)")
    p.add_argument("--runs", type=int, default=RUNS, help="timed calls per model, runtime and batch size")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--work", default="runs/structured", help="the tasks' files")
    p.add_argument("--bases", default="runs/compare", help="compare.py's --work: the bases are shared")
    p.add_argument("--report", action="store_true", help="train nothing: print the table, draw the plot")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    spec, prefix = _spec(args.quick), "quick-" if args.quick else ""
    seeds = tuple(args.seeds or spec.get("seeds", SEEDS))
    work, bases = Path(args.work + ("-quick" if args.quick else "")), Path(args.bases + ("-quick" if args.quick else ""))
    plan = Plan(spec, work, bases / (CONFIG if not args.quick else "quick"), 1, "cpu", seeds, args.recipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix}structured-{CONFIG}.json"
    if args.report:
        if not path.is_file():
            raise SystemExit(f"{path} does not exist yet: run python benchmarks/structured.py first.")
        results = json.loads(path.read_text())
        print(f"`{results['command']}`, {results['wall_seconds'] / 3600:.2f} h wall\n\n{table(results)}")
        plot(results, path.with_suffix(".png"))
        return 0
    command = ("python benchmarks/structured.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    started = time.perf_counter()
    compare.execute(plan, args.jobs, lambda: None)
    if args.recipe:
        choice = recipe_choice(plan)
        write_json(out / f"{prefix}structured-recipe.json", {"command": command, **choice})
        print(json.dumps(choice["candidates"], indent=1), f"\nchosen: {choice['chosen']}")
        return 0
    for seed in seeds:  # after every task: nothing else of this run is running
        if not (plan.folder(seed) / "result-timing.json").is_file():
            write_json(plan.folder(seed) / "result-timing.json", time_seed(plan, seed, spec.get("runs", args.runs)))
    results = write_results(plan, path, command, time.perf_counter() - started)
    print(f"`{command}`\n\n{table(results)}")
    plot(results, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
