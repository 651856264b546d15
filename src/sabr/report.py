"""Everything a run writes for people: ``summary.json`` (the contract), ``summary.md``, plots, the table.

All of it is rendered from one summary dict (see :func:`build_summary`), so the JSON,
the Markdown, the terminal table and the charts can never disagree.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .checkpoint import atomic_write, write_json
from .metrics import count_macs, sparsity_report
from .rundir import RunDir

if TYPE_CHECKING:
    from .experiment import Experiment
    from .regularizer import SABR

log = logging.getLogger(__name__)

PLOTS = RunDir.PLOTS


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def summary_rows(summary: dict) -> list[tuple[str, str, str, str]]:
    """(phase, accuracy, sparsity, note) rows shared by the terminal table and summary.md."""
    b, s, p = summary["base"], summary["sabr"], summary["pruned"]
    rows = [
        ("base", f"{_pct(b['test_accuracy'])} test ({_pct(b['val_accuracy'])} val)", "0.00%", f"{b['epochs']} epochs"),
        ("SABR", f"{_pct(s['val_accuracy'])} val / {_pct(s['test_accuracy'])} test", _pct(s["sparsity"]),
         f"{s['epochs']} epochs{_kept(s)}, {s['frozen']}/{s['tensors']} frozen ({s['stopped'].replace('_', ' ')}), "
         f"|w|<{s['zero_eps']:g}"),
        ("pruned", f"{_pct(p['test_accuracy'])} test", _pct(p["sparsity"]),
         f"{p['nonzero']:,} of {p['total']:,} weights non-zero, {_pct(p['macs_reduction'])} fewer MACs"
         + _budget_note(summary.get("budget"), p)
         + (f", then {p['finetune_epochs']} masked fine-tune epochs ({_pct(p['test_accuracy_before_finetune'])} "
            "test before)" if p.get("finetune_epochs") and "prune_teta1_before_finetune" not in p else "")),
    ]
    st = summary.get("structured")
    if st:
        rows.append(("shrunk", f"{_pct(p['test_accuracy'])} test", f"{_pct(st['params_removed'])} params",
                     f"{st['channels_after']:,} of {st['channels_before']:,} channels kept, MACs "
                     f"{_count(st['macs_before'])} -> {_count(st['macs_after'])}, batch-1 eager "
                     f"{st['speedup_batch1']:.2f}x faster ({st['threads']} thread(s)); same outputs"))
    bp = summary.get("base_pruned")
    if bp:
        rows.append(("base pruned, no SABR", f"{_pct(bp['test_accuracy'])} test", _pct(bp["sparsity"]),
                     f"the base model through the same pruning choice (factor {bp['prune_teta1']:g}, "
                     f"{_pct(bp['val_accuracy'])} val{'' if bp['within_budget'] else ', over the budget'})"))
    return rows


def _kept(sabr: dict) -> str:
    kept = sabr.get("kept_epoch")
    return f" (kept epoch {kept})" if kept is not None and kept != sabr["epochs"] else ""


def _budget_note(budget: dict | None, pruned: dict) -> str:
    if not budget:
        return ""
    limit = (f"budget {100 * budget['max_drop']:g} pt" if budget["max_drop"] is not None else "no budget")
    result = (f"({_pct(budget['val_accuracy'])} val, {limit}{'' if budget['within_budget'] else ': NOT met'})")
    if "prune_teta1_before_finetune" in pruned:  # the fine-tune grew the factor (sabr.ramp.GrowingRamp)
        chosen = ("chosen on validation" if pruned.get("within_budget_before_finetune", True)
                  else "the least-pruned, none within the budget before the fine-tune")
        grown = (f"then the smallest {100 * pruned['channel_share']:g}% of every channel group removed"
                 if "channel_share" in pruned else f"grown to {budget['prune_teta1']:g}")
        return (f"; factor {pruned['prune_teta1_before_finetune']:g} {chosen} "
                f"({_pct(pruned['test_accuracy_before_finetune'])} test), {grown} in "
                f"{pruned['finetune_epochs']} masked fine-tune epochs {result}")
    return f"; factor {budget['prune_teta1']:g} chosen on validation {result}"


def format_table(summary: dict) -> str:
    """A plain-text table of the run for the terminal."""
    rows = [("phase", "accuracy", "sparsity", "")] + summary_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    d, m, p = summary["dataset"], summary["model"], summary["pruned"]
    drop = summary["base"]["test_accuracy"] - p["test_accuracy"]
    lines += ["", f"{m['name']} on {d['name']} ({d['num_classes']} classes, {d['train']}/{d['val']}/{d['test']} "
              f"train/val/test): accuracy drop {100 * drop:.2f} points, MACs {_count(p['macs_dense'])} -> "
              f"{_count(p['macs_pruned'])} per image"]
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    """``summary.md``: the headline table, per-layer figures and the plots."""
    d, m, p = summary["dataset"], summary["model"], summary["pruned"]
    out = [f"# SABR run: {m['name']} on {d['name']}", "",
           f"{d['num_classes']} classes; {d['train']} train / {d['val']} val / {d['test']} test images "
           f"({d['image_size']}x{d['image_size']}, {d['channels']} channel(s)). {m['params']:,} parameters, "
           f"{m['regularised_weights']:,} of them in regularised Conv/Linear weights.", "",
           "| phase | accuracy | sparsity | note |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {n} |" for a, b, c, n in summary_rows(summary)]
    out += ["", f"Sparsity is over the regularised weights; over all parameters the pruned model is "
            f"{_pct(p['sparsity_all_params'])} zeros. MACs per image: {p['macs_dense']:,} dense, "
            f"{p['macs_pruned']:,} after pruning ({_pct(p['macs_reduction'])} fewer).", "",
            "| layer | weights | non-zero | sparsity | threshold | MACs dense | MACs pruned |",
            "|---|---|---|---|---|---|---|"]
    out += [f"| {l['name']} | {l['total']:,} | {l['nonzero']:,} | {_pct(l['sparsity'])} | {l['threshold']:.3g} | "
            f"{l['macs_dense']:,} | {l['macs_pruned']:,} |" for l in summary["layers"]]
    if summary.get("curve"):
        out += ["", "The budget search: SABR's and the base model's weights pruned at each factor, on validation:", "",
                "| factor | SABR sparsity | SABR val | base sparsity | base val |", "|---|---|---|---|---|"]
        out += [f"| {c['teta1']:g} | {_pct(c['sparsity'])} | {_pct(c['val_accuracy'])} | {_pct(c['base_sparsity'])} "
                f"| {_pct(c['base_val_accuracy'])} |" for c in summary["curve"]]
    out += _calibration_lines(summary.get("calibration"))
    frozen = summary["sabr"].get("frozen_tensors")
    if frozen is not None:
        out += ["", "Frozen in phase 2: " + (", ".join(f"`{f['name']}` (epoch {f['epoch']})" for f in frozen)
                                            or "none") + "."]
    for w in summary.get("warnings", []):
        out += ["", f"**Warning:** {w}."]
    out += [""] + [f"![{name[:-4]}]({name})" for name in PLOTS] + [""]
    return "\n".join(out)


def _calibration_lines(c: dict | None) -> list[str]:
    """summary.md's paragraph on the pruned model's decision rule (``summary["calibration"]``)."""
    if not c:
        return []
    ood = c.get("ood") or {}
    check = (f"; frames whose {ood['score']} score is below {ood['threshold']:.4g} are not claimed (it rejects "
             f"{_pct(c.get('ood_background_rejected', 0))} of the generated background frames and keeps "
             f"{_pct(c.get('ood_val_coverage', 0))} of validation)" if ood.get("score") else "")
    return ["", f"Calibration of the pruned model, fitted on validation: temperature {c['temperature']:.4g}; "
            f"claim threshold {c['threshold']:.3f}, the lowest whose claimed validation labels are "
            f"{_pct(c.get('val_precision', 0))} right (target {_pct(c.get('target_precision', 0))}){check}. "
            f"Expected calibration error: validation {_pct(c['ece_val_before'])} -> {_pct(c['ece_val_after'])}, "
            f"test {_pct(c.get('ece_test_before', 0))} -> {_pct(c['ece_test_after'])} (test measured once, "
            "never used to choose)."]


def build_summary(exp: "Experiment", sabr_model: nn.Module, pruned: nn.Module, reg: "SABR", layer_stats: list,
                  figures: dict, curve: list[dict], config: dict) -> dict:
    """The ``summary.json`` contract (fractions in [0, 1], counts as integers)."""
    params = list(reg.params)
    sabr_exact = sparsity_report(sabr_model, params)
    sabr_near = sparsity_report(sabr_model, params, eps=reg.zero_eps)
    pruned_rep = sparsity_report(pruned, params)
    macs = count_macs(pruned, exp.example_input())
    macs_by_weight = {m.weight: m for m in macs.layers}
    layers = []
    for s in layer_stats:
        m = macs_by_weight.get(s.name)
        layers.append({"name": s.name, "total": s.total, "nonzero": s.nonzero, "sparsity": s.sparsity,
                       "threshold": s.threshold, "macs_dense": m.macs_dense if m else 0,
                       "macs_pruned": int(round(m.macs_pruned)) if m else 0})
    n_params = sum(p.numel() for p in pruned.parameters())
    return {
        "dataset": {"name": exp.dataset_name, "classes": list(exp.classes), "num_classes": len(exp.classes),
                    "train": len(exp.train), "val": len(exp.val), "test": len(exp.test),
                    "image_size": exp.preprocess.image_size, "channels": exp.preprocess.channels,
                    "skipped_images": len(exp.skipped)},
        "model": {"name": exp.model_meta["name"], "params": n_params, "regularised_weights": pruned_rep.total},
        "base": figures["base"],
        "sabr": {"stopped": "all_frozen" if reg.all_frozen else "epoch_limit", **figures["sabr"],
                 "sparsity": sabr_near.sparsity, "sparsity_exact": sabr_exact.sparsity, "zero_eps": reg.zero_eps,
                 "frozen": len(reg.frozen), "tensors": len(reg.units)},
        "pruned": {**figures["pruned"], "sparsity": pruned_rep.sparsity, "nonzero": pruned_rep.nonzero,
                   "total": pruned_rep.total, "sparsity_all_params": pruned_rep.all_sparsity,
                   "macs_dense": int(macs.macs_dense), "macs_pruned": int(round(macs.macs_pruned)),
                   "macs_reduction": macs.reduction},
        "layers": layers,
        "curve": curve,
        "config": config,
    }


def structured_figures(pruned: nn.Module, groups: list, example_input: torch.Tensor, runs: int = 30) -> dict:
    """``summary.json``'s ``structured`` entry: the channels structured pruning removed, and the size, MACs
    and measured batch-1 eager latency (medians, interleaved, this process's thread count) of the
    :func:`~sabr.export.shrink` copy against the full-shape pruned model."""
    from .bench import latencies
    from .export import shrink

    model = copy.deepcopy(pruned).cpu().eval()
    x = example_input[:1].detach().cpu()
    small, rep = shrink(model, torch.cat([x, x]))
    t = latencies({"dense": model, "shrunk": small}, x, runs=runs, warmup=3)
    kept = {g.name: rep.layers.get(g.name, (g.channels, g.channels))[1] for g in groups}
    before, after = count_macs(model, x).macs_dense, count_macs(small, x).macs_dense
    return {"groups": len(groups), "channels_before": sum(g.channels for g in groups),
            "channels_after": sum(kept.values()), "channels_kept": kept, "params_before": rep.params_before,
            "params_after": rep.params_after, "params_removed": 1 - rep.params_after / rep.params_before,
            "macs_before": int(before), "macs_after": int(after), "threads": torch.get_num_threads(),
            "latency_ms_batch1": {"dense": 1e3 * t["dense"], "shrunk": 1e3 * t["shrunk"]},
            "speedup_batch1": t["dense"] / t["shrunk"]}


def write_run_report(run: RunDir | str | Path, summary: dict, base_rows: list[dict], sabr_rows: list[dict],
                     lambda_history: dict[str, list[float]]) -> None:
    """Write ``summary.json``, ``summary.md``, ``lambdas.csv`` and every plot into the run folder ``run``."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    atomic_write({run.summary_md: render_markdown(summary).encode()})
    names = list(lambda_history)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["epoch", *names])
    for i in range(len(lambda_history[names[0]]) if names else 0):
        w.writerow([i, *(lambda_history[n][i] for n in names)])
    atomic_write({run.lambdas_csv: buf.getvalue().encode()})
    plots = [run.file(name) for name in PLOTS]
    plot_training_curves(plots[0], base_rows, sabr_rows)
    plot_lambda_history(plots[1], lambda_history)
    plot_layer_sparsity(plots[2], summary["layers"])
    plot_budget_search(plots[3], summary)
    plot_savings(plots[4], plots[5], summary)
    write_json(run.summary_json, summary)  # last: a folder without it is visibly unfinished


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Render ``fig`` to PNG bytes, then write them atomically (a full disk leaves no half-written plot)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    atomic_write({Path(path): buf.getvalue()})


def plot_training_curves(path: Path, base_rows: list[dict], sabr_rows: list[dict]) -> None:
    """Loss and accuracy per epoch, phase 1 then phase 2, with the phase boundary marked."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [("base", r) for r in base_rows] + [("sabr", r) for r in sabr_rows]
    x = list(range(1, len(rows) + 1))
    ax1.plot(x, [r["train_loss"] for _, r in rows], label="train loss (+ L1 in phase 2)")
    ax1.plot(x, [r["val_loss"] for _, r in rows], label="val loss")
    ax2.plot(x, [100 * r["train_accuracy"] for _, r in rows], label="train accuracy")
    ax2.plot(x, [100 * r["val_accuracy"] for _, r in rows], label="val accuracy")
    for ax, label in ((ax1, "loss"), (ax2, "accuracy (%)")):
        if base_rows and sabr_rows:
            ax.axvline(len(base_rows) + 0.5, color="grey", ls="--", lw=1)
            ax.text(len(base_rows) + 0.7, ax.get_ylim()[1], "SABR", va="top", color="grey")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
    ax1.set_yscale("log")
    fig.suptitle("Training curves: base (phase 1) and SABR (phase 2)")
    _save(fig, path)


def plot_lambda_history(path: Path, history: dict[str, list[float]]) -> None:
    """Every tensor's lambda per epoch (log scale), and their average."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, values in history.items():
        ax1.plot(range(len(values)), values, lw=1, label=name if len(history) <= 12 else None)
    n = max((len(v) for v in history.values()), default=0)
    mean = [sum(v[i] for v in history.values()) / len(history) for i in range(n)]
    ax2.plot(range(n), mean, color="C3", marker="o", ms=3)
    ax1.set_title("lambda per regularised tensor")
    ax2.set_title("average lambda")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch of phase 2 (0 = initial)")
        ax.set_ylabel("lambda")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if len(history) <= 12:
        ax1.legend(fontsize=6)
    _save(fig, path)


def _short(name: str) -> str:
    return name[:-len(".weight")] if name.endswith(".weight") else name


def plot_layer_sparsity(path: Path, layers: list[dict]) -> None:
    """Per-layer sparsity after pruning (bars) with each layer's size."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4.5))
    x = range(len(layers))
    ax.bar(x, [100 * l["sparsity"] for l in layers], color="C2")
    ax.set_xticks(list(x), [f"{_short(l['name'])}\n({_count(l['total'])})" for l in layers], rotation=90, fontsize=7)
    ax.set_ylabel("sparsity after pruning (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-layer sparsity (weights per layer in brackets)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_accuracy_vs_sparsity(path: Path, curve: list[dict], base_accuracy: float | None,
                              points: dict[str, tuple[float, float]] | None = None, title: str = "") -> None:
    """Test accuracy against sparsity for several pruning thresholds (the project description's chart)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if curve:
        ax.plot([100 * c["sparsity"] for c in curve], [100 * c["test_accuracy"] for c in curve], marker="o",
                label="SABR + pruning at teta1 in " + ", ".join(f"{c['teta1']:g}" for c in curve))
    if base_accuracy is not None:
        ax.axhline(100 * base_accuracy, color="grey", ls="--", label=f"base model ({100 * base_accuracy:.2f}%)")
    for i, (label, (s, a)) in enumerate((points or {}).items()):
        ax.scatter([100 * s], [100 * a], s=60, zorder=3, color=f"C{i + 1}", label=label)
    ax.set_xlabel("sparsity of regularised weights (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Accuracy vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_budget_search(path: Path, summary: dict) -> None:
    """Validation accuracy against sparsity at every pruning factor, SABR's weights and the base model's, with the
    budget's floor and the chosen model: the picture of what SABR contributed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve, budget = summary.get("curve", []), summary.get("budget") or {}
    ax.plot([100 * c["sparsity"] for c in curve], [100 * c["val_accuracy"] for c in curve], marker="o",
            label="SABR weights, pruned at each factor")
    ax.plot([100 * c["base_sparsity"] for c in curve], [100 * c["base_val_accuracy"] for c in curve], marker="s",
            color="grey", label="base weights, pruned the same way (no SABR)")
    base_val = summary["base"]["val_accuracy"]
    ax.axhline(100 * base_val, color="grey", ls="--", lw=1, label=f"base model ({100 * base_val:.2f}% val)")
    if budget.get("max_drop") is not None:
        floor = budget.get("floor", base_val - budget["max_drop"])  # summaries before the plateau had no floor
        ax.axhline(100 * floor, color="C3", ls=":", label="budget floor (base's plateau less the budget)")
    if budget:
        ax.scatter([100 * summary["pruned"]["sparsity"]], [100 * budget["val_accuracy"]], s=90, zorder=3, color="C2",
                   label=f"chosen (factor {budget['prune_teta1']:g}): {100 * summary['pruned']['test_accuracy']:.2f}% test")
    ax.set_xlabel("sparsity of regularised weights (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(max(0, 100 * base_val - 25), 100.5)
    ax.set_title(f"{summary['model']['name']} on {summary['dataset']['name']}: the budget search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def plot_savings(overall_path: Path, per_layer_path: Path, summary: dict) -> None:
    """Dense vs pruned MACs, overall and per layer."""
    plt = _plt()
    p = summary["pruned"]
    fig, ax = plt.subplots(figsize=(5, 4))
    bars = ax.bar(["dense", "pruned"], [p["macs_dense"], p["macs_pruned"]], color=["C0", "C2"])
    ax.bar_label(bars, [_count(p["macs_dense"]), _count(p["macs_pruned"])])
    ax.set_ylabel("MACs per image")
    ax.set_title(f"Computational savings: {_pct(p['macs_reduction'])} fewer MACs")
    _save(fig, overall_path)

    layers = [l for l in summary["layers"] if l["macs_dense"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(layers) + 2), 4.5))
    x = list(range(len(layers)))
    ax.bar([i - 0.2 for i in x], [l["macs_dense"] for l in layers], 0.4, label="dense")
    ax.bar([i + 0.2 for i in x], [l["macs_pruned"] for l in layers], 0.4, label="pruned")
    ax.set_xticks(x, [_short(l["name"]) for l in layers], rotation=90, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("MACs per image (log)")
    ax.set_title("Computational savings per layer")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, per_layer_path)
