"""The run's charts, drawn from the summary dict and the training histories (see :mod:`sabr.report`).

Only the charts that mean something for the run are drawn (:func:`plots_for`): a run without SABR epochs
(``--epochs-sabr 0``) has no lambda history, a run without a budget search no search chart.
"""

from __future__ import annotations

import io
from pathlib import Path

from .checkpoint import atomic_write
from .rundir import RunDir

PLOTS = RunDir.PLOTS
"""Every chart a run can have, in the order ``summary.md`` shows them (the run folder's names)."""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def count_text(n: float) -> str:
    """``2904576`` -> ``'2.90M'`` (G, M, k)."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def plots_for(summary: dict) -> list[str]:
    """The charts of :data:`PLOTS` that fit the run: no lambda history without phase-2 epochs, no search chart
    without factors tried."""
    skip = set()
    if not summary["sabr"].get("epochs"):
        skip.add("lambda_history.png")
    if not summary.get("curve"):
        skip.add("accuracy_vs_sparsity.png")
    return [name for name in PLOTS if name not in skip]


def draw(folder: Path, names: list[str], summary: dict, base_rows: list[dict], sabr_rows: list[dict],
         lambda_history: dict[str, list[float]]) -> None:
    """Draw the charts ``names`` (from :func:`plots_for`) into ``folder``."""
    path = {name: Path(folder) / name for name in names}
    if "training_curves.png" in path:
        plot_training_curves(path["training_curves.png"], base_rows, sabr_rows)
    if "lambda_history.png" in path:
        plot_lambda_history(path["lambda_history.png"], lambda_history)
    if "layer_sparsity.png" in path:
        plot_layer_sparsity(path["layer_sparsity.png"], summary["layers"])
    if "accuracy_vs_sparsity.png" in path:
        plot_budget_search(path["accuracy_vs_sparsity.png"], summary)
    if "savings_overall.png" in path:
        plot_savings(path["savings_overall.png"], path.get("savings_per_layer.png"), summary)


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
    ax1.plot(x, [r["train_loss"] for _, r in rows], label="train loss (+ L1 in phase 2)" if sabr_rows else "train loss")
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
    phases = [p for p, rows_ in (("base (phase 1)", base_rows), ("SABR (phase 2)", sabr_rows)) if rows_]
    fig.suptitle("Training curves: " + " and ".join(phases))
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
    ax.set_xticks(list(x), [f"{_short(l['name'])}\n({count_text(l['total'])})" for l in layers], rotation=90,
                  fontsize=7)
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


_MIN_DENSITY = 1e-5  # the search chart's right edge: 99.999% sparsity


def _density(sparsity: float) -> float:
    """The non-zero share in percent, floored so that a fully pruned model stays on the log axis."""
    return 100 * max(1.0 - sparsity, _MIN_DENSITY)


def _sparsity_axis(ax, densities: list[float]) -> None:
    """An x axis of sparsity on a log scale of the non-zero share (0%, 90%, 99%, 99.9%, ...), sparser to the
    right: SABR's factors, all between 97% and 99.99%, would otherwise pile up at the right edge."""
    from matplotlib.ticker import FixedLocator, NullLocator

    left, right = 130.0, min(min(densities) / 2, 1.0)  # room around the dense end; 99% sparsity at least
    ticks = [t for t in (100, 10, 1, 0.1, 0.01, 0.001) if right <= t <= left]
    ax.set_xscale("log")
    ax.set_xlim(left, right)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{100 - t:g}%" for t in ticks])
    ax.set_xlabel("sparsity of regularised weights (log scale of the weights left)")


def _kept_label(summary: dict) -> str:
    """The chosen point's legend entry: what the run kept, in the terms of its mode."""
    p, budget = summary["pruned"], summary.get("budget") or {}
    test = f"{_pct(p['test_accuracy'])} test"
    if "channel_share" in p:
        return f"kept: {100 * p['channel_share']:g}% of every channel group removed in the fine-tune ({test})"
    if "prune_teta1_before_finetune" in p:
        return f"kept: factor {budget['prune_teta1']:g} after the fine-tune ({test})"
    return f"kept: factor {budget['prune_teta1']:g} ({test})"


def plot_budget_search(path: Path, summary: dict) -> None:
    """Validation accuracy against sparsity at every pruning factor, SABR's weights and the base model's, with the
    budget's floor and the kept model: the picture of what SABR contributed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    curve, budget, p = summary.get("curve", []), summary.get("budget") or {}, summary["pruned"]
    sabr_x = [_density(c["sparsity"]) for c in curve]
    base_x = [_density(c["base_sparsity"]) for c in curve]
    with_sabr = bool(summary["sabr"].get("epochs"))  # without phase-2 epochs both series are the base's weights
    ax.plot(base_x, [100 * c["base_val_accuracy"] for c in curve], marker="s", color="grey", ms=4,
            label="base weights, pruned the same way (no SABR)" if with_sabr else
            "base weights, pruned at each factor (no SABR epochs)")
    if with_sabr:
        ax.plot(sabr_x, [100 * c["val_accuracy"] for c in curve], marker="o", color="C0", ms=5, zorder=4,
                label="SABR weights, pruned at each factor")
    base_val = summary["base"]["val_accuracy"]
    ax.axhline(100 * base_val, color="grey", ls="--", lw=1, label=f"base model ({100 * base_val:.2f}% val)")
    if budget.get("max_drop") is not None:
        floor = budget.get("floor", base_val - budget["max_drop"])  # summaries before the plateau had no floor
        ax.axhline(100 * floor, color="C3", ls=":", label=f"budget floor ({100 * floor:.2f}% val)")
    kept_x = _density(p["sparsity"])
    if budget:  # a hollow ring, so that the search's own point under it stays visible
        ax.scatter([kept_x], [100 * budget["val_accuracy"]], s=160, zorder=5, facecolors="none",
                   edgecolors="C2", linewidths=2, label=_kept_label(summary))
    _sparsity_axis(ax, sabr_x + base_x + [kept_x])
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(max(0, 100 * base_val - 25), 100.5)
    ax.set_title(f"{summary['model']['name']} on {summary['dataset']['name']}: the budget search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def plot_savings(overall_path: Path, per_layer_path: Path | None, summary: dict) -> None:
    """Dense vs pruned MACs (sabr's one definition, see :func:`sabr.metrics.count_pruned_macs`), overall and
    per layer."""
    from matplotlib.ticker import FuncFormatter

    plt = _plt()
    p = summary["pruned"]
    fig, ax = plt.subplots(figsize=(5, 4))
    bars = ax.bar(["dense", "pruned"], [p["macs_dense"], p["macs_pruned"]], color=["C0", "C2"])
    ax.bar_label(bars, [count_text(p["macs_dense"]), count_text(p["macs_pruned"])])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: count_text(v)))  # no "1e6" offset over the title
    ax.set_ylabel("MACs per image")
    ax.set_ylim(0, 1.12 * p["macs_dense"])
    ax.set_title(f"Computational savings: {_pct(p['macs_reduction'])} fewer MACs")
    _save(fig, overall_path)
    if per_layer_path is None:
        return
    layers = [l for l in summary["layers"] if l["macs_dense"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(layers) + 2), 4.5))
    x = list(range(len(layers)))
    ax.bar([i - 0.2 for i in x], [l["macs_dense"] for l in layers], 0.4, label="dense")
    ax.bar([i + 0.2 for i in x], [l["macs_pruned"] for l in layers], 0.4, label="pruned")
    ax.set_xticks(x, [_short(l["name"]) for l in layers], rotation=90, fontsize=7)
    ax.set_yscale("log")
    top = max((l["macs_dense"] for l in layers), default=1)
    ax.set_ylim(top=8 * top)  # room above the bars for the legend
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: count_text(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_ylabel("MACs per image (log)")
    ax.set_title("Computational savings per layer")
    ax.legend(loc="upper right", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, per_layer_path)
