"""SABR against the pruning methods a user would pick instead: one protocol for all, 3 seeds (issue #13).

Protocol (``PROTOCOL``), per configuration and seed:

* One base model (phase 1 of ``sabr run``, dropout on) trained once and cached as a sabr checkpoint in
  ``--work``; every method starts from it. After it, every method runs with dropout off, Adam, phase 2's
  ReduceLROnPlateau (val loss, factor 0.51, patience 3, min 1e-5) and ``epochs`` epochs in all; each keeps
  its best-validation epoch among those at its final sparsity.
* Peers (:mod:`sabr.baselines`), trained to every target of ``TARGETS`` (no curves, no interpolation):
  ``gmp_layer`` / ``gmp_global`` (cubic ramp over 75% of the steps, uniform or global allocation),
  ``oneshot_layer`` (layer-wise magnitude, then a masked fine-tune), ``l1_fixed`` / ``l1_ramp`` (L1 with
  SABR's initial lambdas, constant or x growth_rate every epoch, for ``epochs - ft_epochs`` epochs, then
  pruned to the target with SABR's rule and fine-tuned, masked, for ``ft_epochs``).
* SABR family: ``sabr run --base-checkpoint <base> --max-drop 0.01`` with ``--epochs-sabr epochs``
  (``sabr``), ``--epochs-sabr epochs-ft_epochs --finetune-epochs ft_epochs`` (``sabr_ft``) or half the
  epochs each (``sabr_ft_half``: the fine-tune's budget ramp gets the epochs it can use); no target.
* Hyper-parameters: 4 trials per method, chosen on validation only: Adam's rate ``LRS`` for GMP and
  one-shot, ``teta1 x L1_SCALES`` for the L1 peers and the SABR family (``--teta1``; the learning rate
  is the L1 peers' and ``sabr run``'s default). A peer is tuned at the middle target (``TUNE_TARGET``)
  and keeps the trial with the best validation accuracy; its other targets are trained once with that
  value. The SABR family (no target) keeps the sparsest trial within its budget on validation. Test
  accuracy is measured once per trained model and never chooses anything.

Results accumulate per (method, target, seed) in ``--out/<config>.json`` (written after every trial),
so a run cut off midway continues where it stopped; ``--report`` prints the tables and draws the plots.
The results of protocol 0.7.0 (``fashion-lenet5-3seeds``) and of 0.1.0 are archived in
``benchmarks/results/archive/`` (docs/archive/): ``--out benchmarks/results/archive`` reports or continues them.

    python benchmarks/compare.py --quick                 # smoke run, about a minute
    python benchmarks/compare.py --estimate              # CPU-hours of the full run, measured
    python benchmarks/compare.py --threads 1             # the full run (both configurations), resumable
    python benchmarks/compare.py --report                # tables and plots of what is there
    python benchmarks/compare.py --merge a/X.json b/X.json  # seeds run side by side, joined into --out
    python benchmarks/compare.py --seeds 2 --methods sabr sabr_ft --out b  # a share of one seed, for a free core
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Collection

import torch
from torch import nn

from sabr import RunConfig, load_checkpoint, save_checkpoint, sparsity_report
from sabr.baselines import oneshot_finetune, train_fixed_l1, train_gmp
from sabr.budget import val_plateau
from sabr.checkpoint import write_json
from sabr.pipeline import Experiment, evaluate_split, prepare, run, train_base
from sabr.train import Split, train_epoch, phase_generator

log = logging.getLogger("compare")

ROOT = Path(__file__).resolve().parents[1]
FASHION = "/usr/share/datasets/fashion-mnist"
PROTOCOL = "0.7.0"
"""0.7.0: ``sabr_ft_half`` joins the SABR family, and a fine-tune whose search found no factor within the budget
starts its ramp at the weakest factor (before, it did not ramp: ``sabr_ft``'s x 100 trials). 0.6.0: ``sabr_ft``
judges the budget after its fine-tune (``sabr run --finetune-epochs`` grows the pruning factor while each
fine-tune epoch keeps validation within the budget; before, the factor was chosen before the fine-tune).
0.5.0: the ``teta1`` grid one step up, x 3 to x 100 (in 0.4.0 the L1 peers and the SABR family all chose x 30,
its top). 0.4.0: the SABR family tunes ``teta1`` as the L1 peers do (0.3.0 tuned its learning rate, at a
``teta1`` whose ramp needs about 60 epochs), and every grid has a fourth value, one step up. 0.3.0: each
peer tuned at one target (0.2.0 tuned every target: 1.5x the CPU, 3x the trials)."""
TARGETS = (0.90, 0.95, 0.98)
TUNE_TARGET = 0.95
SEEDS = (0, 1, 2)
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
L1_SCALES = (3.0, 10.0, 30.0, 100.0)
MAX_DROP = 0.01

CONFIGS: dict[str, dict] = {
    "fashion-lenet5-3seeds": dict(run=dict(data=FASHION, model="lenet5", image_size=28, epochs_base=15),
                                  epochs=20, ft_epochs=5),
    "fashion-small_vgg-3seeds": dict(run=dict(data=FASHION, model="small_vgg", image_size=28, train_per_class=720,
                                              epochs_base=15), epochs=20, ft_epochs=5),
}
QUICK: dict[str, dict] = {  # every split cut to a few images per class: a smoke test of the code, not a figure
    "quick-fashion-lenet5": dict(run=dict(data=FASHION, model="lenet5", image_size=28, max_per_class=25,
                                          epochs_base=1, sweep=[0.2, 1.0]),
                                 epochs=2, ft_epochs=1, seeds=(0,), targets=(0.9,), lrs=(1e-3,), l1_scales=(1.0,)),
}


# --------------------------------------------------------------------------- the methods
def _gmp(allocation: str) -> Callable:
    def method(exp: Experiment, base: nn.Module, target: float, lr: float, spec: dict, work: Path) -> nn.Module:
        return train_gmp(exp, copy.deepcopy(base), spec["epochs"], target, allocation=allocation, lr=lr)[0]
    return method


def _oneshot_layer(exp: Experiment, base: nn.Module, target: float, lr: float, spec: dict, work: Path) -> nn.Module:
    return oneshot_finetune(exp, copy.deepcopy(base), spec["epochs"], target, "layer", lr)[0]


def _l1(ramp: bool) -> Callable:
    def method(exp: Experiment, base: nn.Module, target: float, scale: float, spec: dict, work: Path) -> nn.Module:
        path = work / f"l1_{'ramp' if ramp else 'fixed'}-x{scale:g}.safetensors"  # shared by the targets
        if path.is_file():
            model = load_checkpoint(path, exp.device)[0]
        else:
            model, _, _ = train_fixed_l1(exp, copy.deepcopy(base), spec["epochs"] - spec["ft_epochs"], ramp=ramp,
                                         teta1=exp.config.teta1 * scale)
            save_checkpoint(model, path, exp.metadata("sabr"))
        return oneshot_finetune(exp, model, spec["ft_epochs"], target, "threshold")[0]
    return method


_L1_CALL = ("oneshot_finetune(exp, train_fixed_l1(exp, base, {l1_epochs}, {ramp}teta1={value:g} * {teta1:g})[0], "
            "{ft_epochs}, {target}, 'threshold')")
PEERS: dict[str, tuple[Callable, str, str]] = {  # name -> (method, its trial values, the sabr.baselines call)
    "gmp_layer": (_gmp("layer"), "lrs", "train_gmp(exp, base, {epochs}, {target}, allocation='layer', lr={value:g})"),
    "gmp_global": (_gmp("global"), "lrs", "train_gmp(exp, base, {epochs}, {target}, allocation='global', lr={value:g})"),
    "oneshot_layer": (_oneshot_layer, "lrs", "oneshot_finetune(exp, base, {epochs}, {target}, 'layer', lr={value:g})"),
    "l1_fixed": (_l1(False), "l1_scales", _L1_CALL.replace("{ramp}", "")),
    "l1_ramp": (_l1(True), "l1_scales", _L1_CALL.replace("{ramp}", "ramp=True, ")),
}
SABR_FAMILY: dict[str, Callable[[dict], int]] = {  # name -> its masked fine-tune's epochs, of the spec's
    "sabr": lambda spec: 0, "sabr_ft": lambda spec: spec["ft_epochs"],
    "sabr_ft_half": lambda spec: spec["epochs"] // 2}


def _named(*names: str) -> Callable[[dict], bool]:
    return lambda trial: trial["name"] in names


UPGRADABLE: dict[str, Callable[[dict], bool]] = {
    "0.6.0": lambda t: t["name"] != "sabr_ft" or t["within_budget"],
    "0.5.0": _named(*PEERS, "sabr"), "0.4.0": _named(*PEERS, "sabr"), "0.3.0": _named(*PEERS)}
"""Earlier protocols whose trials are trials of this one (same values, same training), by which trials are kept
on upgrade: 0.6.0's ``sabr_ft`` trials outside the budget did not ramp; ``sabr_ft`` before 0.6.0 chose its
pruning factor before the fine-tune; 0.3.0's SABR family tuned another hyper-parameter."""


def _peer_trial(exp: Experiment, base: nn.Module, name: str, target: float, value: float, spec: dict,
                work: Path) -> dict:
    method, _, call = PEERS[name]
    torch.manual_seed(exp.config.seed)
    model = method(exp, base, target, value, spec, work)
    return {"val_accuracy": evaluate_split(exp, model, exp.val)[1], "sparsity": sparsity_report(model).sparsity,
            "test_accuracy": evaluate_split(exp, model, exp.test)[1],
            "command": "sabr.baselines." + call.format(target=target, value=value, teta1=exp.config.teta1,
                                                       l1_epochs=spec["epochs"] - spec["ft_epochs"], **spec)}


def sabr_config(spec: dict, seed: int, base_path: Path, ft: int, scale: float, out: Path,
                threads: int | None = None, device: str = "cpu") -> RunConfig:
    """The ``sabr run`` configuration of a SABR-family trial with ``ft`` masked fine-tune epochs: ``teta1`` =
    the configuration's x ``scale`` (as the L1 peers scale it), the same epoch budget as every peer."""
    run = dict(spec["run"])
    teta1 = run.pop("teta1", RunConfig.teta1) * scale
    return RunConfig(**run, seed=seed, base_checkpoint=str(base_path), epochs_sabr=spec["epochs"] - ft,
                     finetune_epochs=ft, teta1=teta1, max_drop=MAX_DROP, device=device, threads=threads, out=str(out))


def _sabr_trial(cfg: RunConfig) -> dict:
    """One ``sabr run`` (continued when its folder holds a started run, read back when it has finished)."""
    out = Path(cfg.out)
    if (out / "summary.json").is_file() and not (out / "resume.safetensors").exists():
        summary = json.loads((out / "summary.json").read_text())
    else:
        summary = run(cfg, progress=False, overwrite=True, resume=(out / "config.yaml").is_file())
    budget = summary["budget"]
    return {"val_accuracy": budget["val_accuracy"], "within_budget": budget["within_budget"],
            "sparsity": summary["pruned"]["sparsity"], "test_accuracy": summary["pruned"]["test_accuracy"],
            "command": cfg.command()}


# --------------------------------------------------------------------------- accumulation
def choose(trials: list[dict], family: bool) -> dict:
    """The trial a method keeps, on validation only: the sparsest within the budget for the SABR family
    (the best validation accuracy when none fits), the best validation accuracy for a peer."""
    if family:
        fits = [t for t in trials if t["within_budget"]]
        if fits:
            return max(fits, key=lambda t: (t["sparsity"], t["val_accuracy"]))
    return max(trials, key=lambda t: t["val_accuracy"])


def accumulate(results: dict, save: Callable[[], None], name: str, target: float | None, seed: int,
               values: tuple, train: Callable[[float], dict], base_test_accuracy: float) -> dict:
    """The ``methods`` entry of (``name``, ``target``, ``seed``), training only what ``results`` lacks.

    Each trial (``train(value)`` -> figures) is appended to ``results["trials"]`` and saved at once; the
    entry, once every trial is there, goes to ``results["methods"]`` with the chosen trial's figures.
    """
    key = {"name": name, "target": target, "seed": seed}
    for entry in results["methods"]:
        if all(entry[k] == v for k, v in key.items()):
            return entry
    done = {t["value"]: t for t in results["trials"] if all(t[k] == v for k, v in key.items())}
    for value in values:
        if value not in done:
            started = time.perf_counter()
            done[value] = {**key, "value": value, **train(value), "seconds": round(time.perf_counter() - started, 1)}
            results["trials"].append(done[value])
            save()
    best = choose([done[v] for v in values], name.startswith("sabr"))
    entry = {**key, "sparsity": best["sparsity"], "test_accuracy": best["test_accuracy"],
             "base_test_accuracy": base_test_accuracy, "command": best["command"], "value": best["value"],
             "trials": len(values)}
    results["methods"].append(entry)
    save()
    return entry


def tune_then_train(results: dict, save: Callable[[], None], name: str, targets: tuple, seed: int, values: tuple,
                    train: Callable[[float, float], dict], base_test_accuracy: float) -> list[dict]:
    """A peer's ``methods`` entries, one per target: every value of ``values`` tried at ``TUNE_TARGET`` (the
    first target when it is not among them), the value chosen on validation then trained once at each other
    target (``train(target, value)`` -> figures)."""
    tune = TUNE_TARGET if TUNE_TARGET in targets else targets[0]
    entries: list[dict] = []
    for target in (tune, *(t for t in targets if t != tune)):
        tried = values if not entries else (entries[0]["value"],)
        entries.append(accumulate(results, save, name, target, seed, tried, lambda v, t=target: train(t, v),
                                  base_test_accuracy))
    return entries


# --------------------------------------------------------------------------- one configuration, one seed
def base_model(exp: Experiment, path: Path) -> tuple[nn.Module, dict]:
    """The seed's base model: read from ``path`` when a previous run cached it, else trained and saved there."""
    if path.is_file():
        model, meta = load_checkpoint(path, exp.device)
        return model, {k: meta[k] for k in ("val_accuracy", "test_accuracy", "seconds", "epochs")}
    torch.manual_seed(exp.config.seed)  # as `sabr run` does: this is the base it would train
    started = time.perf_counter()
    model, rows = train_base(exp, exp.new_model(), progress=False)
    val = evaluate_split(exp, model, exp.val)[1]
    figures = {"val_accuracy": val, "val_plateau": val_plateau([r["val_accuracy"] for r in rows], val),
               "test_accuracy": evaluate_split(exp, model, exp.test)[1],
               "seconds": round(time.perf_counter() - started, 1), "epochs": len(rows)}
    save_checkpoint(model, path, exp.metadata("base", **figures))
    return model, figures


def check_base(results: dict, seed: int, figures: dict, path: Path) -> None:
    """Refuse to add to ``results`` rows of a base other than the one its rows of ``seed`` were trained from
    (a base trained again on another machine, device or thread count, or a --work folder of another run):
    the base's validation and test accuracy must be the recorded ones."""
    known = results["bases"].get(str(seed))
    keys = ("val_accuracy", "test_accuracy")
    if known and all(k in known for k in keys) and any(known[k] != figures[k] for k in keys):
        raise SystemExit(
            f"seed {seed}'s base {path} (validation {figures['val_accuracy']:.4f}, test {figures['test_accuracy']:.4f}) "
            f"is not the base the results file's rows were trained from (validation {known['val_accuracy']:.4f}, "
            f"test {known['test_accuracy']:.4f}); pass the --work folder that holds that base, or another --out.")


def run_seed(name: str, spec: dict, seed: int, results: dict, save: Callable[[], None], work: Path,
             threads: int | None, methods: Collection[str] | None = None, device: str = "cpu") -> None:
    """Every method (of ``methods``, default all), target and trial of one seed that ``results`` does not hold
    yet, trained on ``device`` (``sabr run``'s ``--device``)."""
    cfg = RunConfig(**spec["run"], seed=seed, device=device, threads=threads)
    torch.manual_seed(seed)
    exp = prepare(cfg, progress=False)
    work.mkdir(parents=True, exist_ok=True)
    base_path = work / "base.safetensors"
    base, figures = base_model(exp, base_path)
    check_base(results, seed, figures, base_path)
    results["bases"][str(seed)] = figures
    results.update(train=len(exp.train), val=len(exp.val), test=len(exp.test))
    log.info("%s seed %d: base test %.2f%% (%d/%d/%d images)", name, seed, 100 * figures["test_accuracy"],
             len(exp.train), len(exp.val), len(exp.test))
    acc = figures["test_accuracy"]
    for method, (_, values, _) in PEERS.items():
        if methods is not None and method not in methods:
            continue
        train = lambda t, v, m=method: _peer_trial(exp, base, m, t, v, spec, work)  # noqa: E731
        for entry in tune_then_train(results, save, method, spec.get("targets", TARGETS), seed,
                                     spec.get(values, _default(values)), train, acc):
            _logged(entry)
    for method, ft_epochs in SABR_FAMILY.items():
        if methods is not None and method not in methods:
            continue

        def train(scale: float, method: str = method, ft: int = ft_epochs(spec)) -> dict:
            folder = work / f"{method}-teta1x{scale:g}-p{PROTOCOL}"  # another protocol's run is never read back
            return _sabr_trial(sabr_config(spec, seed, base_path, ft, scale, folder, threads, device))
        _logged(accumulate(results, save, method, None, seed, spec.get("l1_scales", L1_SCALES), train, acc))


def _default(values: str) -> tuple:
    return {"lrs": LRS, "l1_scales": L1_SCALES}[values]


def _logged(entry: dict) -> None:
    target = "budget" if entry["target"] is None else f"{100 * entry['target']:.0f}%"
    log.info("%-13s %-6s seed %d: sparsity %.2f%%  test %.2f%% (base %.2f%%)", entry["name"], target, entry["seed"],
             100 * entry["sparsity"], 100 * entry["test_accuracy"], 100 * entry["base_test_accuracy"])


def upgrade(results: dict) -> dict:
    """``results`` under ``PROTOCOL``: a file of an :data:`UPGRADABLE` protocol keeps its bases and the trials
    that protocol shares with this one (every method is chosen again from them, with the trials the new
    values add; a trial of a value no longer in the grid is kept and not chosen); a file of any other
    protocol is returned as it is."""
    kept = UPGRADABLE.get(results.get("protocol"))
    if kept is None:
        return results
    return {**results, "protocol": PROTOCOL, "upgraded_from": results["protocol"], "methods": [],
            "trials": [t for t in results["trials"] if kept(t)]}


def load_results(path: Path, name: str, spec: dict, command: str) -> dict:
    """The results file of a configuration: the one a cut-off run left (upgraded, see :func:`upgrade`), or a
    new one. A file written under another protocol is refused (the 0.1.0 files are kept as they are)."""
    if path.is_file():
        results = upgrade(json.loads(path.read_text()))
        if results.get("protocol") != PROTOCOL:
            raise SystemExit(f"{path} holds results of protocol {results.get('protocol')!r}, not {PROTOCOL}: "
                             "leave it, and pass another --out.")
        return results
    return {"config": name, "protocol": PROTOCOL, "spec": spec, "max_drop": MAX_DROP, "command": command,
            "bases": {}, "trials": [], "methods": []}  # main() records the runs' "threads"


def merge(parts: list[dict]) -> dict:
    """One results file from several of the same configuration and protocol, e.g. seeds run side by side
    (``--seeds N --out DIR`` per process): bases, trials and methods joined, each (name, target, seed[, value])
    once (the first file's copy), each file upgraded first (:func:`upgrade`). Raises ``SystemExit`` on files of
    different configurations or protocols."""
    parts = [upgrade(r) for r in parts]
    kinds = {(r.get("config"), r.get("protocol")) for r in parts}
    if len(kinds) != 1:
        raise SystemExit(f"cannot merge results of different configurations or protocols: {sorted(map(str, kinds))}")
    merged = {**parts[0], "bases": {}, "trials": [], "methods": []}
    seen: set = set()
    for r in parts:
        merged["bases"] = {**r["bases"], **merged["bases"]}
        for kind, key in (("trials", ("name", "target", "seed", "value")), ("methods", ("name", "target", "seed"))):
            for entry in r[kind]:
                k = (kind, *(entry[f] for f in key))
                if k not in seen:
                    seen.add(k)
                    merged[kind].append(entry)
    return merged


# --------------------------------------------------------------------------- cost
def planned(spec: dict) -> tuple[int, int]:
    """``(training epochs, validation passes)`` of one seed at most (the SABR family may stop earlier)."""
    e, f, targets = spec["epochs"], spec["ft_epochs"], len(spec.get("targets", TARGETS))
    lrs, scales = len(spec.get("lrs", LRS)), len(spec.get("l1_scales", L1_SCALES))
    train = (spec["run"]["epochs_base"] + 3 * (lrs + targets - 1) * e + 2 * (scales * (e - f) + (scales + targets - 1) * f)
             + len(SABR_FAMILY) * scales * e)
    factors = len(spec["run"].get("sweep", RunConfig().sweep))
    return train, train + len(SABR_FAMILY) * scales * 2 * factors  # + the budget search: both models, every factor


def estimate(name: str, spec: dict, threads: int | None) -> float:
    """CPU-hours of the configuration's full run, from a training epoch and a validation pass timed on
    20 batches of this machine (``threads`` torch threads)."""
    exp = prepare(RunConfig(**spec["run"], device="cpu", threads=threads), progress=False)
    if threads:
        torch.set_num_threads(threads)
    model, bs = exp.new_model(), exp.config.batch_size
    sample = Split(exp.train.images[:20 * bs], exp.train.labels[:20 * bs])
    opt = torch.optim.Adam(model.parameters())
    train_epoch(model, opt, Split(sample.images[:bs], sample.labels[:bs]), exp.preprocess, exp.device, bs,
                phase_generator(0, "base"))  # warm-up
    t = time.perf_counter()
    train_epoch(model, opt, sample, exp.preprocess, exp.device, bs, phase_generator(0, "base"))
    epoch_s = (time.perf_counter() - t) * len(exp.train) / len(sample)
    t = time.perf_counter()
    evaluate_split(exp, model, Split(exp.val.images[:2000], exp.val.labels[:2000]))
    val_s = (time.perf_counter() - t) * len(exp.val) / min(2000, len(exp.val))
    epochs, passes = planned(spec)
    seeds = len(spec.get("seeds", SEEDS))
    hours = seeds * (epochs * epoch_s + passes * val_s) * torch.get_num_threads() / 3600
    print(f"{name}: {len(exp.train)} training images, epoch {epoch_s:.1f} s + validation {val_s:.1f} s on "
          f"{torch.get_num_threads()} thread(s); {seeds} seeds x ({epochs} epochs + {passes} validations) = "
          f"{hours:.1f} CPU-hours at most")
    return hours


# --------------------------------------------------------------------------- report
def _stats(xs: list[float]) -> str:
    return f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs) if len(xs) > 1 else 0:.2f}"


def table(results: dict) -> tuple[str, dict]:
    """Markdown rows (mean ± std over seeds, paired differences against the best SABR-family entry) and
    the groups ``{(name, target): {seed: entry}}`` they come from."""
    groups: dict = {}
    for m in results["methods"]:
        groups.setdefault((m["name"], m["target"]), {})[m["seed"]] = m

    def drop(g: dict) -> float:
        return statistics.mean(m["base_test_accuracy"] - m["test_accuracy"] for m in g.values())

    family = [k for k in groups if k[0].startswith("sabr")]
    within = [k for k in family if drop(groups[k]) <= MAX_DROP]
    best = (max(within, key=lambda k: statistics.mean(m["sparsity"] for m in groups[k].values())) if within
            else min(family, key=lambda k: drop(groups[k])) if family else None)
    lines = [f"| method | target | seeds | sparsity % | test % | drop (pt) | Δ test vs {best and best[0]} (pt) | "
             "Δ sparsity (pt) |", "|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=lambda k: (k[0].startswith("sabr"), k[0], k[1] or 0)):
        g = groups[key]
        paired = [s for s in g if best and s in groups[best]]
        diff = lambda f: _stats([g[s][f] - groups[best][s][f] for s in paired]) if paired else "-"  # noqa: E731
        cells = [key[0], "budget" if key[1] is None else f"{100 * key[1]:.0f}%", str(len(g)),
                 _stats([m["sparsity"] for m in g.values()]), _stats([m["test_accuracy"] for m in g.values()]),
                 _stats([m["base_test_accuracy"] - m["test_accuracy"] for m in g.values()]), diff("test_accuracy"),
                 diff("sparsity")]
        lines.append("| " + " | ".join(cells) + " |")
    reach = {n: max([t for (m, t), g in groups.items() if m == n and t is not None and drop(g) <= MAX_DROP],
                    default=None) for n, _ in groups if not n.startswith("sabr")}
    lines += ["", "Reach (highest target whose mean drop is at most 1 point): " +
              ", ".join(f"{n} {'-' if t is None else f'{100 * t:.0f}%'}" for n, t in sorted(reach.items()))]
    return "\n".join(lines), groups


def plot(results: dict, groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({n for n, _ in groups}):
        pts = sorted((statistics.mean(m["sparsity"] for m in g.values()), [m["test_accuracy"] for m in g.values()])
                     for (n, _), g in groups.items() if n == name)
        ax.errorbar([100 * s for s, _ in pts], [100 * statistics.mean(a) for _, a in pts],
                    yerr=[100 * statistics.stdev(a) if len(a) > 1 else 0 for _, a in pts],
                    marker="*" if name.startswith("sabr") else "o", ms=9 if name.startswith("sabr") else 5,
                    capsize=3, label=name, ls="" if name.startswith("sabr") else "-")
    base = 100 * statistics.mean(b["test_accuracy"] for b in results["bases"].values())
    ax.axhline(base, color="grey", ls="--", lw=1, label="base (mean)")
    ax.axhline(base - 100 * MAX_DROP, color="grey", ls=":", lw=1, label="base - 1 pt")
    ax.set_xlabel("sparsity of Conv/Linear weights (%)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"{results['config']} (protocol {results['protocol']})", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(out: Path) -> None:
    for path in sorted(out.glob("*.json")):
        results = json.loads(path.read_text())
        if results.get("protocol") != PROTOCOL or not results.get("methods"):
            continue  # another benchmark's file, or one measured under protocol 0.1.0
        text, groups = table(results)
        device = results.get("device_name", results.get("device", "cpu"))
        print(f"### {results['config']}\n\n`{results['command']}` (trained on {device}); base test accuracy "
              + ", ".join(f"seed {s}: {100 * b['test_accuracy']:.2f}%" for s, b in sorted(results["bases"].items()))
              + f".\n\n{text}\n\n![{results['config']}](../benchmarks/results/{path.stem}.png)\n")
        plot(results, groups, path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the smoke configuration (about a minute)")
    p.add_argument("--configs", nargs="+", help=f"configurations (default: all): {', '.join(CONFIGS)}")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the configuration's, 0 1 2)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of <config>.json/.png")
    p.add_argument("--work", default="runs/compare", help="cached base models, L1 phases and sabr run folders")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="where every method trains: cpu (default) or cuda[:N]; the "
                   "results file records it, and a file of another device is refused")
    p.add_argument("--methods", nargs="+", choices=[*PEERS, *SABR_FAMILY], help="only these methods (default: all; "
                   "e.g. the SABR family in a second process with its own --out, joined by --merge)")
    p.add_argument("--estimate", action="store_true", help="train nothing: print the CPU-hours of the full run")
    p.add_argument("--report", action="store_true", help="train nothing: print the tables, draw the plots")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="train nothing: join results files of one "
                   "configuration (seeds run side by side with their own --out) into --out, then report")
    p.add_argument("--command", help="with --merge: the command the joined file records (default: the first "
                   "file's), e.g. the one that ran the parts")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch of every method")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sabr").setLevel(logging.INFO if args.verbose else logging.WARNING)
    table_ = QUICK if args.quick else CONFIGS
    names = args.configs or list(table_)
    unknown = [n for n in names if n not in {**CONFIGS, **QUICK}]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {', '.join([*CONFIGS, *QUICK])}")
    if args.device != "cpu" and not torch.cuda.is_available():
        p.error(f"--device {args.device} was asked for but no CUDA GPU is visible; use --device cpu")
    out = Path(args.out)
    if args.merge:
        merged = merge([json.loads(Path(f).read_text()) for f in args.merge])
        merged["command"] = args.command or merged["command"]
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / f"{merged['config']}.json", merged)
        report(out)
        return 0
    if args.report:
        report(out)
        return 0
    if args.estimate:
        total = sum(estimate(n, {**CONFIGS, **QUICK}[n], args.threads) for n in names)
        print(f"total: {total:.1f} CPU-hours at most")
        return 0
    command = "python benchmarks/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        spec = {**CONFIGS, **QUICK}[name]
        path = out / f"{name}.json"
        results = load_results(path, name, spec, command)
        if results["trials"] and results.get("device", "cpu") != args.device:  # files before --device: the CPU
            raise SystemExit(f"{path} holds results trained on {results.get('device', 'cpu')}, not {args.device}: "
                             "pass the same --device, or another --out.")
        results["threads"] = args.threads or torch.get_num_threads()  # what the runs use (RunConfig.threads)
        results["device"] = args.device
        if args.device.startswith("cuda"):
            results["device_name"] = torch.cuda.get_device_name(torch.device(args.device))
        for seed in args.seeds or spec.get("seeds", SEEDS):
            run_seed(name, spec, seed, results, lambda: write_json(path, results), Path(args.work) / name / f"seed{seed}",
                     args.threads, args.methods, args.device)
    report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
