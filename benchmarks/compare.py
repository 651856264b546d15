"""SABR with every default against tuned peers at SABR's own sparsity: issue 33's protocol (docs/benchmarks.md,
"Protocol"), run from scratch by one command in at most 2.5 hours on a 2-core machine.

Per configuration and seed (``PROTOCOL``, fixed before the run):

* **base**: phase 1 of ``sabr run`` (``epochs_base`` epochs), trained once, cached in ``--work``; every
  method starts from it and gets ``EPOCHS`` epochs after it, Adam and phase 2's LR schedule.
* **sabr**: ``sabr run`` with the protocol's flags only (data, model, image size, split sizes, the base,
  ``--epochs-sabr``, seed, threads, device, out): every SABR setting at its default, no trials. Its
  ``EPOCHS`` are phase 2's ``--epochs-sabr`` and phase 4's default pruning ramp
  (:data:`sabr.config.FINETUNE_RAMP_EPOCHS`).
* **ablation_l1_fixed / ablation_l1_ramp**: the same ``sabr run`` with SABR's adaptation off
  (:func:`sabr.baselines.fixed_l1_settings` / ``ramp_l1_settings`` of the defaults: L1 at SABR's default
  starting strength, constant or x1.15 every epoch), so through the same budget tracker and search.
* **peers** (``gmp_layer``, ``gmp_global``, ``oneshot_layer``, ``l1_fixed``, ``l1_ramp``): trained to SABR's
  pruned sparsity on the same seed; on the first seed each tries ``GRIDS`` (3 values) and keeps the best
  validation accuracy, later seeds train the chosen value once. A configuration with ``peers_from`` runs
  only the ``TOP_PEERS`` peers of that configuration with the best mean validation accuracy.
* The test split is read once per final model, after every choice: by ``sabr run`` for its result, and here
  for a peer's chosen trial only (:func:`choose_trial` and :func:`strongest_peers` read validation figures).

Each task writes its own JSON in ``--work`` (atomically), so a cut-off run continues where it stopped;
``--jobs 2`` runs two tasks at a time, one torch thread each. ``<out>/<config>.json`` holds the entries of
issue 33's "Done when" and the paired statistics; ``--report`` prints the tables and draws the plots.
Results of earlier protocols are in ``benchmarks/results/archive/`` (made by this file at commit 7f9d54c).

    python benchmarks/compare.py                 # both configurations, seeds 3-5, two jobs (~2.2 h here)
    python benchmarks/compare.py --quick         # tiny digits runs: a check of the code, seconds
    python benchmarks/compare.py --report        # tables and plots of what is there
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from sabr import RunConfig, load_checkpoint, save_checkpoint, sparsity_report
from sabr.baselines import fixed_l1_settings, oneshot_finetune, ramp_l1_settings, train_fixed_l1, train_gmp
from sabr.budget import val_plateau
from sabr.checkpoint import write_json
from sabr.config import FINETUNE_RAMP_EPOCHS, SABR_DEFAULTS
from sabr.pipeline import evaluate_split, prepare, run, train_base

log = logging.getLogger("compare")

ROOT = Path(__file__).resolve().parents[1]
FASHION = "/usr/share/datasets/fashion-mnist"
PROTOCOL = "1.1.0"
"""1.1.0: 1.0.0 on new seeds (3-5) after SABR's default gained phase 4's pruning ramp: SABR's 20 epochs are
phase 2's 10 and the ramp's default 10. 1.0.0 (issue 33): peers at SABR's own sparsity, 3 values each tuned
on seed 0, the compute-matched L1 ablation, a 2,000-image validation split, paired t intervals. 0.7.0 and
earlier: ``results/archive/``."""
SEEDS = (3, 4, 5)
EPOCHS = 20
FT_EPOCHS = 5  # the L1 peers' masked fine-tune, within EPOCHS
TOLERANCE = 0.005  # a peer's sparsity must be within this of SABR's
TOP_PEERS = 2
GRIDS = {"lr": (3e-4, 1e-3, 3e-3), "teta1_scale": (10.0, 30.0, 100.0)}
PEERS = {"gmp_layer": "lr", "gmp_global": "lr", "oneshot_layer": "lr", "l1_fixed": "teta1_scale",
         "l1_ramp": "teta1_scale"}
ABLATIONS = {"ablation_l1_fixed": fixed_l1_settings, "ablation_l1_ramp": ramp_l1_settings}

CONFIGS: dict[str, dict] = {
    "fashion-lenet5": dict(data=dict(data=FASHION, model="lenet5", image_size=28, train_per_class=1200,
                                     val_per_class=200), epochs_base=20, peers=list(PEERS)),
    "fashion-resnet20": dict(data=dict(data=FASHION, model="resnet20", image_size=28, train_per_class=600,
                                       val_per_class=200), epochs_base=20, peers_from="fashion-lenet5"),
}
QUICK: dict[str, dict] = {  # tiny digits runs: a check of the code in seconds, not a figure
    "quick-a": dict(data=dict(data="digits", max_per_class=12), epochs_base=1, peers=list(PEERS), epochs=2,
                    ft_epochs=1, ramp=1, seeds=(0, 1)),
    "quick-b": dict(data=dict(data="digits", max_per_class=12), epochs_base=1, peers_from="quick-a", epochs=2,
                    ft_epochs=1, ramp=1, seeds=(0, 1)),
}


# --------------------------------------------------------------------------- the tasks (each returns a JSON dict)
def _exp(spec: dict, seed: int, threads: int | None, device: str, **extra):
    torch.manual_seed(seed)
    return prepare(RunConfig(**spec["data"], seed=seed, threads=threads, device=device, **extra), progress=False)


def task_base(spec: dict, seed: int, folder: Path, threads: int | None, device: str) -> dict:
    """Phase 1 of ``sabr run``, saved as a sabr checkpoint that ``--base-checkpoint`` reads (with its plateau)."""
    exp = _exp(spec, seed, threads, device, epochs_base=spec["epochs_base"])
    torch.manual_seed(seed)  # as `sabr run` does: this is the base it would train
    model, rows = train_base(exp, exp.new_model(), progress=False)
    val = evaluate_split(exp, model, exp.val)[1]
    figures = {"val_accuracy": val, "val_plateau": val_plateau([r["val_accuracy"] for r in rows], val),
               "test_accuracy": evaluate_split(exp, model, exp.test)[1], "epochs": len(rows),
               "train": len(exp.train), "val": len(exp.val), "test": len(exp.test)}
    save_checkpoint(model, folder / "base.safetensors", exp.metadata("base", **figures))
    return figures


def sabr_config(spec: dict, seed: int, folder: Path, name: str, threads: int | None, device: str) -> RunConfig:
    """The ``sabr run`` of ``sabr`` (protocol flags only) or of an ablation (SABR's adaptation switched off)."""
    settings = {}
    if name in ABLATIONS:  # fast_start None is "off"; 1 says the same on the command line
        off = dataclasses.replace(ABLATIONS[name](SABR_DEFAULTS), fast_start=1.0)
        settings = {k: v for k, v in dataclasses.asdict(off).items() if v != getattr(SABR_DEFAULTS, k)}
    ramp = spec.get("ramp", FINETUNE_RAMP_EPOCHS)  # phase 4's default epochs, within the method's budget
    return RunConfig(**spec["data"], base_checkpoint=str(folder / "base.safetensors"),
                     epochs_sabr=spec.get("epochs", EPOCHS) - ramp, seed=seed, threads=threads, device=device,
                     out=str(folder / name), **settings,
                     **({} if ramp == FINETUNE_RAMP_EPOCHS else {"finetune_epochs": ramp}))


def run_or_read(cfg: RunConfig) -> dict:
    """The ``summary.json`` of ``sabr run`` with ``cfg``: read when the run has finished (and was not recorded),
    else the run, continued when its folder holds a started one."""
    out = Path(cfg.out)
    if (out / "summary.json").is_file() and not (out / "resume.safetensors").exists():
        return json.loads((out / "summary.json").read_text())
    return run(cfg, progress=False, overwrite=True, resume=(out / "config.yaml").is_file())


def task_sabr_run(spec: dict, seed: int, folder: Path, threads: int | None, device: str, name: str) -> dict:
    """One ``sabr run`` (continued when cut off); its result's figures and its command."""
    cfg = sabr_config(spec, seed, folder, name, threads, device)
    summary = run_or_read(cfg)
    return {"sparsity": summary["pruned"]["sparsity"], "val_accuracy": summary["budget"]["val_accuracy"],
            "within_budget": summary["budget"]["within_budget"], "test_accuracy": summary["pruned"]["test_accuracy"],
            "command": cfg.command() + " --quiet"}


def _train_peer(exp, base, peer: str, target: float, value: float, spec: dict):
    epochs, ft = spec.get("epochs", EPOCHS), spec.get("ft_epochs", FT_EPOCHS)
    if peer.startswith("gmp"):
        alloc = peer.split("_")[1]
        call = f"train_gmp(exp, base, {epochs}, {target:.6f}, allocation='{alloc}', lr={value:g})"
        return train_gmp(exp, base, epochs, target, allocation=alloc, lr=value)[0], call
    if peer == "oneshot_layer":
        call = f"oneshot_finetune(exp, base, {epochs}, {target:.6f}, 'layer', lr={value:g})"
        return oneshot_finetune(exp, base, epochs, target, "layer", value)[0], call
    ramp, teta1 = peer == "l1_ramp", SABR_DEFAULTS.teta1 * value
    model = train_fixed_l1(exp, base, epochs - ft, ramp=ramp, teta1=teta1)[0]
    call = (f"oneshot_finetune(exp, train_fixed_l1(exp, base, {epochs - ft}, ramp={ramp}, teta1={teta1:g})[0], "
            f"{ft}, {target:.6f}, 'threshold')")
    return oneshot_finetune(exp, model, ft, target, "threshold")[0], call


def task_trial(spec: dict, seed: int, folder: Path, threads: int | None, device: str, peer: str, value: float,
               target: float) -> dict:
    """A peer trained to ``target`` (SABR's sparsity) with one hyper-parameter value; validation only (its
    weights are kept for :func:`task_final`)."""
    exp = _exp(spec, seed, threads, device)
    base = load_checkpoint(folder / "base.safetensors", exp.device)[0]
    torch.manual_seed(seed)
    model, call = _train_peer(exp, copy.deepcopy(base), peer, target, value, spec)
    save_checkpoint(model, folder / f"{peer}-{value:g}.safetensors", exp.metadata("pruned"))
    return {"peer": peer, "value": value, "target": target, "val_accuracy": evaluate_split(exp, model, exp.val)[1],
            "sparsity": sparsity_report(model).sparsity, "command": f"sabr.baselines.{call}"}


def task_final(spec: dict, seed: int, folder: Path, threads: int | None, device: str, trial: dict) -> dict:
    """The chosen trial's test accuracy: the one test reading of a peer's final model."""
    exp = _exp(spec, seed, threads, device)
    model = load_checkpoint(folder / f"{trial['peer']}-{trial['value']:g}.safetensors", exp.device)[0]
    return {"test_accuracy": evaluate_split(exp, model, exp.test)[1]}


TASKS = {"base": task_base, "sabr": task_sabr_run, "trial": task_trial, "final": task_final}


def _run_task(kind, args: tuple, kwargs: dict, path: str, threads: int | None) -> str:
    """Run one task (``kind``: a key of ``TASKS`` or a module-level function) and write its JSON to ``path``."""
    before = torch.get_num_threads()  # restored: with --jobs 1 the task runs in the caller's process
    if threads:
        torch.set_num_threads(threads)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("sabr").setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        result = (TASKS[kind] if isinstance(kind, str) else kind)(*args, **kwargs)
    finally:
        torch.set_num_threads(before)
    write_json(Path(path), {**result, "seconds": round(time.perf_counter() - started, 1)})
    return path


# --------------------------------------------------------------------------- choices: validation only
def choose_trial(trials: list[dict]) -> dict:
    """A peer's trial: the best validation accuracy among those within ``TOLERANCE`` of their target (all when
    none is). Reads ``val_accuracy``, ``sparsity``, ``target`` and ``value`` only."""
    near = [t for t in trials if abs(t["sparsity"] - t["target"]) <= TOLERANCE] or trials
    return max(near, key=lambda t: (t["val_accuracy"], -t["value"]))


def strongest_peers(chosen: dict[str, list[dict]], top: int = TOP_PEERS) -> list[str]:
    """The ``top`` peers with the best mean validation accuracy of their chosen trials over the seeds."""
    return sorted(chosen, key=lambda p: -statistics.mean(t["val_accuracy"] for t in chosen[p]))[:top]


# --------------------------------------------------------------------------- the schedule
class Plan:
    """Every task of the protocol, its file in ``work`` and what it waits for; :meth:`ready` lists those that can
    start now, from the files written so far."""

    def __init__(self, configs: dict, work: Path, threads: int | None, device: str, seeds: tuple | None):
        self.configs, self.work, self.threads, self.device, self.seeds = configs, work, threads, device, seeds

    def seeds_of(self, name: str) -> tuple:
        return tuple(self.seeds or self.configs[name].get("seeds", SEEDS))

    def folder(self, name: str, seed: int) -> Path:
        return self.work / name / f"seed{seed}"

    def read(self, path: Path) -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    def peers(self, name: str) -> list[str] | None:
        """The configuration's peers; ``None`` while the configuration they come from is not finished."""
        spec = self.configs[name]
        if "peers" in spec:
            return spec["peers"]
        source = spec["peers_from"]
        chosen = {p: [self.chosen(source, s, p) for s in self.seeds_of(source)] for p in self.peers(source) or []}
        if not chosen or any(t is None for ts in chosen.values() for t in ts):
            return None
        return strongest_peers(chosen)

    def trials(self, name: str, seed: int, peer: str) -> tuple[list[float], list[dict]]:
        """The values the peer tries on this seed (the grid on the first seed, its choice later) and the
        trials done."""
        first = self.seeds_of(name)[0]
        if seed == first:
            values = list(GRIDS[PEERS[peer]])
        else:
            pick = self.chosen(name, first, peer)
            values = [] if pick is None else [pick["value"]]
        done = [self.read(self.folder(name, seed) / f"result-trial-{peer}-{v:g}.json") for v in values]
        return values, [t for t in done if t is not None]

    def chosen(self, name: str, seed: int, peer: str) -> dict | None:
        values, done = self.trials(name, seed, peer)
        return choose_trial(done) if values and len(done) == len(values) else None

    def tasks(self) -> list[tuple[Path, str, tuple, dict]]:
        """The tasks whose inputs exist and whose file does not: (file, kind, args, kwargs), those others wait
        for first (bases, then SABR, trials, finals; the ablations, which nothing waits for, last)."""
        out = []
        for name, spec in self.configs.items():
            for seed in self.seeds_of(name):
                out += self._seed_tasks(name, spec, seed)
        rank = {"base": 0, "sabr": 1, "trial": 2, "final": 3}
        return sorted(out, key=lambda t: 4 if t[3].get("name") in ABLATIONS else rank[t[1]])

    def _seed_tasks(self, name: str, spec: dict, seed: int) -> list:
        folder = self.folder(name, seed)
        common = (spec, seed, folder, self.threads, self.device)
        if not (folder / "result-base.json").is_file():
            return [(folder / "result-base.json", "base", common, {})]
        todo = [(folder / f"result-{m}.json", "sabr", common, {"name": m}) for m in ("sabr", *ABLATIONS)]
        sabr, peers = self.read(folder / "result-sabr.json"), self.peers(name)
        for peer in (peers or []) if sabr else []:
            values, done = self.trials(name, seed, peer)
            todo += [(folder / f"result-trial-{peer}-{v:g}.json", "trial", common,
                      {"peer": peer, "value": v, "target": sabr["sparsity"]}) for v in values]
            if values and len(done) == len(values):
                todo.append((folder / f"result-final-{peer}.json", "final", common, {"trial": choose_trial(done)}))
        return [t for t in todo if not t[0].is_file()]


def execute(plan: Plan, jobs: int, on_done) -> None:
    """Run every task of ``plan``, ``jobs`` at a time (1: in this process), calling ``on_done()`` after each."""
    if jobs <= 1:
        while todo := plan.tasks():
            path, kind, args, kwargs = todo[0]
            _run_task(kind, args, kwargs, str(path), plan.threads)
            on_done()
        return
    running: dict = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while True:
            for path, kind, args, kwargs in plan.tasks():
                if len(running) < jobs and str(path) not in running.values():
                    running[pool.submit(_run_task, kind, args, kwargs, str(path), plan.threads)] = str(path)
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                log.info("done: %s", running.pop(future))
                future.result()  # a failed task stops the run (its file is not written: it runs again next time)
            on_done()


# --------------------------------------------------------------------------- results and statistics
def entries(plan: Plan, name: str) -> tuple[list[dict], dict]:
    """The ``methods`` entries of a configuration (issue 33's schema) and its bases, from the task files."""
    methods, bases = [], {}
    for seed in plan.seeds_of(name):
        folder = plan.folder(name, seed)
        base = plan.read(folder / "result-base.json")
        if base is None:
            continue
        bases[str(seed)] = base
        row = {"seed": seed, "base_test_accuracy": base["test_accuracy"]}
        for m in ("sabr", *ABLATIONS):
            r = plan.read(folder / f"result-{m}.json")
            if r is not None:
                methods.append({"name": m, "target": None if m == "sabr" else "budget", **row, **_keep(r)})
        for peer in plan.peers(name) or []:
            final, pick = plan.read(folder / f"result-final-{peer}.json"), plan.chosen(name, seed, peer)
            if final is not None and pick is not None:
                methods.append({"name": peer, "target": "sabr", **row, **_keep(pick), **final,
                                "value": pick["value"], "hyper_parameter": PEERS[peer]})
    return methods, bases


def _keep(r: dict) -> dict:
    return {k: r[k] for k in ("sparsity", "val_accuracy", "test_accuracy", "command") if k in r}


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the ``level`` t interval (n - 1 degrees of freedom) of paired differences."""
    from scipy.stats import t

    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("-inf"), float("inf")
    half = t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """SABR "ahead" or "behind" only where the interval excludes zero; "tied" otherwise."""
    return "ahead" if low > 0 else "behind" if high < 0 else "tied"


def paired(methods: list[dict], test_images: int, ours: str = "sabr",
           keys: tuple[str, ...] = ("test_accuracy", "sparsity")) -> list[dict]:
    """``ours`` minus each other method, same seed: each of ``keys`` with a 95% t interval and a verdict, the
    test accuracy also in test images."""
    sabr = {m["seed"]: m for m in methods if m["name"] == ours}
    out = []
    for name in dict.fromkeys(m["name"] for m in methods if m["name"] != ours):
        mine = {m["seed"]: m for m in methods if m["name"] == name and m["seed"] in sabr}
        if not mine:
            continue
        row = {"method": name, "seeds": sorted(mine)}
        for key in keys:
            mean, low, high = t_interval([sabr[s][key] - mine[s][key] for s in sorted(mine)])
            row[key] = {"mean": mean, "low": low, "high": high, "verdict": verdict(low, high)}
        row["test_accuracy"]["images"] = round(row["test_accuracy"]["mean"] * test_images, 1)
        out.append(row)
    return out


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def protocol_commit(*files: str) -> str | None:
    """The last commit that changed ``files`` (default this file and docs/benchmarks.md): the one that fixed the
    protocol."""
    files = files or ("benchmarks/compare.py", "docs/benchmarks.md")
    try:
        return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", *files],
                              capture_output=True, text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def same_run(before: dict, command: str) -> bool:
    """Whether ``before`` (a ``<config>.json`` found in ``--out``) was written by an earlier session of this run:
    the same command under the same protocol. A file of an earlier protocol is not (its wall and commit are its
    own: counting them made protocol 1.1.0's file say 4.2 hours and 1.0.0's commit)."""
    return before.get("command") == command and before.get("protocol") == PROTOCOL


def earlier_session(path: Path, command: str) -> dict:
    """The ``<config>.json`` at ``path`` when an earlier session of this run wrote it (:func:`same_run`), else
    ``{}``."""
    before = json.loads(path.read_text()) if path.is_file() else {}
    return before if same_run(before, command) else {}


def earlier_wall(out: Path, configs: dict, command: str) -> dict[str, float]:
    """The wall seconds earlier sessions of this run spent on each configuration's file."""
    return {name: earlier_session(out / f"{name}.json", command).get("wall_seconds", 0.0) for name in configs}


def write_results(plan: Plan, out: Path, command: str, earlier: dict[str, float], wall: float) -> None:
    """``<out>/<config>.json`` for every configuration, ``wall_seconds`` summed over resumed sessions."""
    for name in plan.configs:
        methods, bases = entries(plan, name)
        if not bases:
            continue
        path = out / f"{name}.json"
        before = earlier_session(path, command)
        test_images = next(iter(bases.values()))["test"]
        write_json(path, {"config": name, "command": command, "protocol": PROTOCOL,
                          "protocol_commit": before.get("protocol_commit") or protocol_commit(),
                          "wall_seconds": round(earlier.get(name, 0.0) + wall, 1), "machine": machine(),
                          "spec": plan.configs[name], "grids": GRIDS, "bases": bases, "methods": methods,
                          "paired": paired(methods, test_images)})


# --------------------------------------------------------------------------- report
def mean_std(xs: list[float], scale: float = 100, digits: int = 2) -> str:
    """``mean ± std`` of ``xs`` times ``scale`` (std 0 for one value)."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * statistics.mean(xs):.{digits}f} ± {scale * sd:.{digits}f}"


def table(results: dict) -> str:
    """Markdown: mean ± std per method, then SABR minus each method with its 95% interval and verdict."""
    groups: dict[str, list[dict]] = {}
    for m in results["methods"]:
        groups.setdefault(m["name"], []).append(m)
    lines = ["| method | target | seeds | sparsity % | val % | test % | drop (pt) |", "|---|---|---|---|---|---|---|"]
    for name, ms in groups.items():
        lines.append(f"| {name} | {ms[0]['target'] or '-'} | {len(ms)} | {mean_std([m['sparsity'] for m in ms])} | "
                     f"{mean_std([m['val_accuracy'] for m in ms])} | {mean_std([m['test_accuracy'] for m in ms])} | "
                     f"{mean_std([m['base_test_accuracy'] - m['test_accuracy'] for m in ms])} |")
    lines += ["", "| SABR minus | Δ test (pt) [95% CI] | images | Δ sparsity (pt) [95% CI] | verdict (test) |",
              "|---|---|---|---|---|"]
    for p in results["paired"]:
        a, s = p["test_accuracy"], p["sparsity"]
        lines.append(f"| {p['method']} | {100 * a['mean']:+.2f} [{100 * a['low']:+.2f}, {100 * a['high']:+.2f}] | "
                     f"{a['images']:+g} | {100 * s['mean']:+.2f} [{100 * s['low']:+.2f}, {100 * s['high']:+.2f}] | "
                     f"{a['verdict']} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(m["name"] for m in results["methods"]):
        ms = [m for m in results["methods"] if m["name"] == name]
        x, y = (100 * statistics.mean(m[k] for m in ms) for k in ("sparsity", "test_accuracy"))
        ax.errorbar(x, y,
                    yerr=100 * statistics.stdev(m["test_accuracy"] for m in ms) if len(ms) > 1 else 0, capsize=3,
                    marker="*" if name == "sabr" else "o", ms=10 if name == "sabr" else 5, ls="", label=name)
    base = 100 * statistics.mean(b["test_accuracy"] for b in results["bases"].values())
    ax.axhline(base, color="grey", ls="--", lw=1, label="base (mean)")
    ax.axhline(base - 1, color="grey", ls=":", lw=1, label="base - 1 pt")
    ax.set_xlabel("sparsity of Conv/Linear weights (%)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"{results['config']} (protocol {results['protocol']})", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(out: Path, names) -> None:
    for name in names:
        path = out / f"{name}.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text())
        hours = results["wall_seconds"] / 3600
        print(f"### {name}\n\n`{results['command']}`, {hours:.2f} h wall\n\n{table(results)}\n")
        plot(results, path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny digits configurations: a check of the code")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the protocol's, 3 4 5)")
    p.add_argument("--jobs", type=int, default=2, help="tasks at a time, each in its own process (1: this one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per task")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of <config>.json/.png")
    p.add_argument("--work", default="runs/compare", help="the tasks' files: bases, runs, trials")
    p.add_argument("--report", action="store_true", help="train nothing: print the tables, draw the plots")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    configs, out = (QUICK if args.quick else CONFIGS), Path(args.out)
    if args.report:
        report(out, configs)
        return 0
    plan = Plan(configs, Path(args.work), args.threads, args.device, tuple(args.seeds) if args.seeds else None)
    command = "python benchmarks/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    command, started = command.strip(), time.perf_counter()
    earlier = earlier_wall(out, configs, command)
    save = lambda: write_results(plan, out, command, earlier, time.perf_counter() - started)  # noqa: E731
    execute(plan, args.jobs, save)
    save()
    report(out, configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
