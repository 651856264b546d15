"""Everything a run writes for people: ``summary.json`` (the contract), ``summary.md``, the terminal table.

All of it is rendered from one summary dict (see :func:`build_summary`), so the JSON, the Markdown, the
terminal table and the charts (:mod:`sabr.plots`) can never disagree. The first line of the table and of
``summary.md`` is the run's status (:func:`run_status`): a run near chance, with nothing removed or outside
its budget says so before any figure, with the next step to try.
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

from . import plots
from .checkpoint import atomic_write, json_text, write_json
from .metrics import count_pruned_macs, sparsity_report
from .plots import PLOTS, plot_accuracy_vs_sparsity  # noqa: F401 - re-exported: sabr prune draws its chart
from .rundir import RunDir

if TYPE_CHECKING:
    from .experiment import Experiment
    from .regularizer import SABR

log = logging.getLogger(__name__)

STATUSES = ("ok", "outside_budget", "near_chance", "nothing_removed")
"""The values of ``summary.json["status"]``; when several apply, the first of near_chance, nothing_removed,
outside_budget is reported."""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


_count = plots.count_text


def near_chance(accuracy: float, num_classes: int) -> bool:
    """Whether ``accuracy`` (a fraction) is no more than a tenth of the way from chance (``1 / num_classes``)
    to perfect: 19% on 10 classes, 55% on 2."""
    chance = 1 / max(num_classes, 1)
    return accuracy < chance + (1 - chance) / 10


def run_status(summary: dict) -> tuple[str, str]:
    """``(status, what it means and the next step to try)`` of a finished run's summary (pure).

    ``near_chance``: the base model (on validation) or the pruned model (on test) is near chance
    (:func:`near_chance`), so the run's figures mean nothing. ``nothing_removed``: pruning zeroed no weight.
    ``outside_budget``: no pruning factor kept the validation accuracy at the budget's floor (the least-pruned
    model is kept). Otherwise ``ok``.
    """
    d, b, p = summary["dataset"], summary["base"], summary["pruned"]
    budget, n = summary.get("budget") or {}, d["num_classes"]
    chance = f"chance {_pct(1 / n)} on {n} classes"
    cfg = summary.get("config", {})
    structured = summary.get("structured") is not None or cfg.get("structured")
    if near_chance(b["val_accuracy"], n):
        return "near_chance", (f"the base model is near chance ({_pct(b['val_accuracy'])} validation accuracy, "
                               f"{chance}), so what pruning keeps or removes from it means nothing; next: train it "
                               "longer (--epochs-base), lower --lr, or check that the classes' images differ")
    if near_chance(p["test_accuracy"], n):
        return "near_chance", (f"the pruned model is near chance ({_pct(p['test_accuracy'])} test accuracy, "
                               f"{chance}); next: set a budget (--max-drop) or prune less (--prune-teta1)")
    if p["nonzero"] >= p["total"]:
        what = "no channel" if structured else "no weight"
        return "nothing_removed", (
            f"pruning removed {what}: the kept model is as large and as slow as the base; next: allow a larger "
            "drop (--max-drop), train phase 2 longer (--epochs-sabr)"
            + (", or fine-tune longer (--finetune-epochs) so that the cut channels can recover" if structured
               else ", or prune after a masked fine-tune (--finetune-epochs)"))
    fixed = [f"--{k.replace('_', '-')} {cfg[k]:g}" for k in ("prune_teta1", "epsilon") if cfg.get(k) is not None]
    if budget.get("max_drop") is not None and not budget.get("within_budget", True) and fixed:
        return "outside_budget", (
            f"the fixed pruning ({fixed[0]}) leaves validation below the budget's floor "
            f"({_pct(budget['val_accuracy'])} against {_pct(budget.get('floor'))}); next: prune less, or leave "
            f"{fixed[0].split()[0]} out so that the budget chooses the factor")
    if budget.get("max_drop") is not None and not budget.get("within_budget", True):
        return "outside_budget", (
            f"no pruning factor kept validation within the budget ({_pct(budget['val_accuracy'])} against the floor "
            f"{_pct(budget.get('floor'))}), so the least-pruned model is kept; next: raise --max-drop, train phase 2 "
            "with a smaller --teta1, or fine-tune (--finetune-epochs)")
    limit = (f"within the {100 * budget['max_drop']:g}-point budget on validation ({_pct(budget['val_accuracy'])}, "
             f"floor {_pct(budget.get('floor'))})" if budget.get("max_drop") is not None
             else "no budget (the factor was fixed)")
    return "ok", limit


def headline(summary: dict) -> list[str]:
    """The run's first two result lines: its status (and the next step), then what it kept."""
    status, message = summary.get("status") or run_status(summary)[0], summary.get("status_message")
    if message is None:
        message = run_status(summary)[1]
    d, m, b, p = summary["dataset"], summary["model"], summary["base"], summary["pruned"]
    drop = b["test_accuracy"] - p["test_accuracy"]
    return [f"{status.upper()}: {message}",
            f"{m['name']} on {d['name']} ({d['num_classes']} classes, {d['train']}/{d['val']}/{d['test']} "
            f"train/val/test): {_pct(p['sparsity'])} of the weights zero, test accuracy {_pct(b['test_accuracy'])} "
            f"-> {_pct(p['test_accuracy'])} (drop {100 * drop:.2f} points), MACs {_count(p['macs_dense'])} -> "
            f"{_count(p['macs_pruned'])} per image"]


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
    """The run's result for the terminal: the status line, what it kept, then the phase table."""
    rows = [("phase", "accuracy", "sparsity", "")] + summary_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join([*headline(summary), "", *lines])


def format_result(summary: dict, as_json: bool = False) -> str:
    """What ``sabr run`` prints on stdout: ``summary.json``'s content as JSON, or the table and the run folder."""
    if as_json:
        return json_text(summary)
    return (f"{format_table(summary)}\n\nrun folder: {summary['config']['out']} "
            "(summary.md, summary.json, plots, checkpoints)\n")


def _floor_sentence(summary: dict) -> str:
    budget, base = summary.get("budget") or {}, summary["base"]
    if budget.get("max_drop") is None:
        return "No budget (`--max-drop` unset): every factor is admitted."
    plateau = base.get("val_plateau", base["val_accuracy"])
    return (f"The floor is {_pct(budget['floor'])} validation accuracy: the base model's validation plateau "
            f"({_pct(plateau)}, the median of its last ten epochs, at most its best epoch's "
            f"{_pct(base['val_accuracy'])}) "
            f"less the {100 * budget['max_drop']:g}-point budget (`--max-drop`).")


def choice_rule(curve: list[dict], floor: float | None, kept: float, key: str = "val_accuracy") -> str:
    """One sentence: why the search kept the factor ``kept`` among the ``curve``'s factors (``key`` is the
    validation figure compared with ``floor``). It states :func:`sabr.budget.choose`'s rule on this run's numbers."""
    ordered = sorted(curve, key=lambda c: c["teta1"])
    if floor is None:
        return f"Without a budget every factor is admitted, so the strongest ({kept:g}) was kept."
    fail = next((c for c in ordered if c[key] < floor), None)
    fits = [c for c in ordered if fail is None or c["teta1"] < fail["teta1"]]
    if not fits:
        return (f"No factor reached the floor (the weakest, {ordered[0]['teta1']:g}, scored {_pct(ordered[0][key])}), "
                f"so the least-pruned ({kept:g}) was kept and the run is outside its budget.")
    if fail is None:
        return f"Every factor reached the floor, so the strongest ({kept:g}) was kept."
    if len(fits) == 1:
        return (f"Only the weakest factor ({kept:g}) reached the floor before {fail['teta1']:g} fell below it "
                f"({_pct(fail[key])}), so it was kept.")
    later = [c["teta1"] for c in ordered if c["teta1"] > fail["teta1"] and c[key] >= floor]
    return (f"Factors up to {fits[-1]['teta1']:g} reached the floor and {fail['teta1']:g} was the first below it "
            f"({_pct(fail[key])}); the rule keeps one factor of margin before the first failure, so {kept:g} was "
            f"kept, not {fits[-1]['teta1']:g}: next to the cliff the validation split cannot tell a model that keeps "
            "its test accuracy from one that loses several test images"
            + (f" (a factor that reaches the floor again after the first failure, {', '.join(f'{t:g}' for t in later)}"
               " here, counts as noise)" if later else "") + ".")


def _edge(curve: list[dict], floor: float | None, key: str = "base_val_accuracy") -> str:
    """`` (its last factor before the first below the floor, 0.65, and that one, 0.8)`` for the base's row."""
    ordered = sorted(curve, key=lambda c: c["teta1"])
    fail = next((i for i, c in enumerate(ordered) if floor is not None and c[key] < floor), None)
    if not fail:  # no floor, every factor fits, or none does: the rule's sentence above says it all
        return ""
    return (f" (its last factor before the first below the floor is {ordered[fail - 1]['teta1']:g}, the first "
            f"below it {ordered[fail]['teta1']:g})")


def _choice_section(summary: dict) -> list[str]:
    """``summary.md``'s explanation of the kept factor: the floor, the rule in one sentence, every factor tried."""
    curve, budget, p, cfg = summary["curve"], summary.get("budget") or {}, summary["pruned"], summary.get("config", {})
    floor = budget.get("floor") if budget.get("max_drop") is not None else None
    kept = p.get("prune_teta1_before_finetune", budget.get("prune_teta1"))
    if cfg.get("epsilon") is not None:
        rule = f"`--epsilon {cfg['epsilon']:g}` set the pruning threshold; the factors were tried for the chart only."
    elif cfg.get("prune_teta1") is not None:
        rule = f"`--prune-teta1` fixed the factor at {kept:g}; the other factors were tried for the chart only."
    else:
        rule = choice_rule(curve, floor, kept)
    if "channel_share" in p:
        rule += (f" The masked fine-tune then cut every channel group to its top share and gave channels back while "
                 f"validation stayed below the floor, keeping {100 * p['channel_share']:g}% of each group removed "
                 f"({_pct(budget['val_accuracy'])} validation).")
    elif "prune_teta1_before_finetune" in p:
        rule += (f" The masked fine-tune then pruned further while validation held the floor, up to factor "
                 f"{budget['prune_teta1']:g} ({_pct(budget['val_accuracy'])} validation).")
    bp = summary.get("base_pruned") or {}
    if bp and cfg.get("prune_teta1") is None and cfg.get("epsilon") is None:
        rule += (f" The base model's weights went through the same rule: factor {bp['prune_teta1']:g}"
                 f"{_edge(curve, floor)}.")
    mark = lambda ok: "-" if floor is None else "yes" if ok else "no"  # noqa: E731
    out = ["## How the pruning factor was chosen", "", _floor_sentence(summary), "", rule, "",
           "Every factor tried on validation (SABR's weights and, pruned the same way, the base model's):", "",
           "| factor | SABR zeros | SABR val | within the floor | base zeros | base val | within the floor |",
           "|---|---|---|---|---|---|---|"]
    for c in curve:
        f = f"**{c['teta1']:g} (kept)**" if c["teta1"] == kept else f"{c['teta1']:g}"
        base_kept = " (kept)" if bp.get("prune_teta1") == c["teta1"] else ""
        out.append(f"| {f} | {_pct(c['sparsity'])} | {_pct(c['val_accuracy'])} | "
                   f"{mark(floor is not None and c['val_accuracy'] >= floor)} | {_pct(c['base_sparsity'])} | "
                   f"{_pct(c['base_val_accuracy'])} | {mark(floor is not None and c['base_val_accuracy'] >= floor)}"
                   f"{base_kept} |")
    return out


def render_markdown(summary: dict, charts: list[str] | None = None) -> str:
    """``summary.md``: the status first, the headline table, how the factor was chosen, per-layer figures and
    the ``charts`` (default: :func:`sabr.plots.plots_for`)."""
    d, m, p = summary["dataset"], summary["model"], summary["pruned"]
    status, facts = headline(summary)
    name, _, message = status.partition(": ")
    out = [f"# SABR run: {m['name']} on {d['name']} (status: {summary.get('status') or name.lower()})", "",
           f"**{name}:** {message}.", "", facts + ".", "",
           f"{d['num_classes']} classes; {d['train']} train / {d['val']} val / {d['test']} test images "
           f"({d['image_size']}x{d['image_size']}, {d['channels']} channel(s)). {m['params']:,} parameters, "
           f"{m['regularised_weights']:,} of them in regularised Conv/Linear weights.", "",
           "| phase | accuracy | sparsity | note |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {n} |" for a, b, c, n in summary_rows(summary)]
    if summary.get("curve"):
        out += [""] + _choice_section(summary)
    out += ["", f"Sparsity is over the regularised weights; over all parameters the pruned model is "
            f"{_pct(p['sparsity_all_params'])} zeros. MACs per image (every convolution and matrix product, "
            f"those by a zero weight or into a removed channel left out): {p['macs_dense']:,} dense, "
            f"{p['macs_pruned']:,} after pruning ({_pct(p['macs_reduction'])} fewer).", "",
            "| layer | weights | non-zero | sparsity | threshold | MACs dense | MACs pruned |",
            "|---|---|---|---|---|---|---|"]
    out += [f"| {l['name']} | {l['total']:,} | {l['nonzero']:,} | {_pct(l['sparsity'])} | {l['threshold']:.3g} | "
            f"{l['macs_dense']:,} | {l['macs_pruned']:,} |" for l in summary["layers"]]
    out += _calibration_lines(summary.get("calibration"))
    frozen = summary["sabr"].get("frozen_tensors")
    if frozen is not None:
        out += ["", "Frozen in phase 2: " + (", ".join(f"`{f['name']}` (epoch {f['epoch']})" for f in frozen)
                                            or "none") + "."]
    for w in summary.get("warnings", []):
        out += ["", f"**Warning:** {w}."]
    charts = plots.plots_for(summary) if charts is None else charts
    out += [""] + [f"![{name[:-4]}]({name})" for name in charts] + [""]
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


def status_entry(summary: dict) -> dict:
    """``summary.json``'s ``status`` (one of :data:`STATUSES`) and ``status_message`` (its sentence with the next
    step), from :func:`run_status`."""
    status, message = run_status(summary)
    if status != "ok":
        log.warning("%s: %s", status, message)
    return {"status": status, "status_message": message}


def build_summary(exp: "Experiment", sabr_model: nn.Module, pruned: nn.Module, reg: "SABR", layer_stats: list,
                  figures: dict, curve: list[dict], config: dict) -> dict:
    """The ``summary.json`` contract (fractions in [0, 1], counts as integers)."""
    params = list(reg.params)
    sabr_exact = sparsity_report(sabr_model, params)
    sabr_near = sparsity_report(sabr_model, params, eps=reg.zero_eps)
    pruned_rep = sparsity_report(pruned, params)
    macs = count_pruned_macs(pruned, exp.example_input())
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
    (:func:`~sabr.metrics.count_pruned_macs`, the figures of the run's headline) and measured batch-1 eager
    latency (medians, interleaved, this process's thread count) of the :func:`~sabr.export.shrink` copy against
    the full-shape pruned model."""
    from .bench import latencies
    from .export import shrink

    model = copy.deepcopy(pruned).cpu().eval()
    x = example_input[:1].detach().cpu()
    small, rep = shrink(model, torch.cat([x, x]))
    t = latencies({"dense": model, "shrunk": small}, x, runs=runs, warmup=3)
    kept = {g.name: rep.layers.get(g.name, (g.channels, g.channels))[1] for g in groups}
    macs = count_pruned_macs(model, x)
    return {"groups": len(groups), "channels_before": sum(g.channels for g in groups),
            "channels_after": sum(kept.values()), "channels_kept": kept, "params_before": rep.params_before,
            "params_after": rep.params_after, "params_removed": 1 - rep.params_after / rep.params_before,
            "macs_before": int(macs.macs_dense), "macs_after": int(round(macs.macs_pruned)),
            "threads": torch.get_num_threads(),
            "latency_ms_batch1": {"dense": 1e3 * t["dense"], "shrunk": 1e3 * t["shrunk"]},
            "speedup_batch1": t["dense"] / t["shrunk"]}


def write_run_report(run: RunDir | str | Path, summary: dict, base_rows: list[dict], sabr_rows: list[dict],
                     lambda_history: dict[str, list[float]]) -> None:
    """Write ``summary.json``, ``summary.md``, ``lambdas.csv`` and the charts that fit the run
    (:func:`sabr.plots.plots_for`) into the run folder ``run``."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    charts = plots.plots_for(summary)
    atomic_write({run.summary_md: render_markdown(summary, charts).encode()})
    names = list(lambda_history)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["epoch", *names])
    for i in range(len(lambda_history[names[0]]) if names else 0):
        w.writerow([i, *(lambda_history[n][i] for n in names)])
    atomic_write({run.lambdas_csv: buf.getvalue().encode()})
    plots.draw(run.path, charts, summary, base_rows, sabr_rows, lambda_history)
    write_json(run.summary_json, summary)  # last: a folder without it is visibly unfinished
