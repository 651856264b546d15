"""Which channel graph removes zeroed channels correctly on more models: sabr's ``torch.fx`` graph or Torch-Pruning's?

Issue #16 asks to make Torch-Pruning's dependency graph the shrink backend if it handles more models than
sabr's own. Per architecture (random weights, every BatchNorm given non-trivial statistics):

1. ``sabr.channel_groups`` finds the coupled channel groups; about half of each group's channels get every
   parameter set to zero (weights, biases, BatchNorm scale and shift), so that the channel's output is an
   exact zero and removing it must leave the model's output unchanged;
2. ``sabr``: :func:`sabr.shrink` removes them;
3. ``torch_pruning``: ``tp.DependencyGraph`` on the same model removes the same channels, group by group
   (``get_pruning_group`` on each group's first layer with the group's zeroed indices, ``check_pruning_group``,
   ``prune``): the same channels, so both backends are judged on one task.

A backend passes a model when it removes at least one channel, raises nothing, and the smaller model's
output equals the original's within 1e-5. Then each graph's reach: half of every group it finds removed
(``sabr.prune_channel_share`` + ``sabr.shrink`` on sabr's groups, rounded down to multiples of 8;
:func:`sabr.baselines.torch_pruning_channels` at ratio 0.5 on Torch-Pruning's, the classifier kept whole), the
parameters left, and whether the result runs. Timing is not measured. Prints a table and writes
``benchmarks/results/shrink-backends.json``.

    python benchmarks/shrink_backends.py                      # every architecture below (about a minute)
    python benchmarks/shrink_backends.py --models resnet18    # some of them
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

import sabr
from sabr.baselines import torch_pruning_channels
from sabr.channels import channel_groups

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = {  # name: (input channels, image size); sabr's built-ins, then torchvision families
    "compact_cnn": (1, 8), "lenet5": (1, 28), "small_vgg": (1, 28), "vgg11": (3, 32), "resnet18": (3, 32),
    "mobilenet_v2": (3, 32), "resnet50": (3, 32), "efficientnet_b0": (3, 32), "densenet121": (3, 32),
    "mobilenet_v3_small": (3, 32), "googlenet": (3, 64), "regnet_x_400mf": (3, 32),
    "shufflenet_v2_x0_5": (3, 64), "mnasnet0_5": (3, 32), "squeezenet1_0": (3, 64),
}
TOLERANCE = 1e-5


def prepared(name: str) -> tuple[nn.Module, torch.Tensor, list]:
    """The architecture with random BatchNorm statistics, an input batch, and its channel groups with about
    half of each group's channels zeroed in every parameter (channel 0 kept): ``(model, x, [(group, idxs)])``."""
    chans, size = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = sabr.create_model(name, 10, chans, size)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(2, chans, size, size)
    named, gen, zeroed = dict(model.named_parameters()), torch.Generator().manual_seed(0), []
    with torch.no_grad():
        for group in channel_groups(model, x[:1]):
            drop = torch.rand(group.channels, generator=gen) < 0.5
            drop[0] = False
            for p in group.parameters:
                named[p][drop] = 0.0
            zeroed.append((group, drop.nonzero().flatten().tolist()))
    return model, x, zeroed


def with_sabr(model: nn.Module, x: torch.Tensor, zeroed: list) -> nn.Module:
    return sabr.shrink(model, x)[0]


def with_torch_pruning(model: nn.Module, x: torch.Tensor, zeroed: list) -> nn.Module:
    import torch_pruning as tp

    small = model  # judge() passes a copy: pruned in place
    dg = tp.DependencyGraph().build_dependency(small, example_inputs=x[:1])
    modules = dict(small.named_modules())
    for group, idxs in zeroed:
        layer = modules[group.weights[0].rsplit(".", 1)[0]]
        fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
        if idxs:
            pruning = dg.get_pruning_group(layer, fn, idxs=idxs)
            if dg.check_pruning_group(pruning):
                pruning.prune()
    return small


def reach(case: tuple[nn.Module, torch.Tensor, list]) -> dict:
    """Each graph's own groups, half of each removed, on a :func:`prepared` architecture: ``{backend: parameters
    left, or the error}``."""
    model, x, zeroed = case
    out = {}
    for backend in ("sabr", "torch_pruning"):
        try:
            m = copy.deepcopy(model)
            if backend == "sabr":
                sabr.prune_channel_share(m, [group for group, _ in zeroed], 0.5)
                m = sabr.shrink(m, x)[0]
            else:
                m = torch_pruning_channels(m, x[:1], 0.5)
            with torch.no_grad():
                m.eval()(x)
            out[backend] = params(m)
        except Exception as exc:  # noqa: BLE001 - a backend's failure on a model is the measurement
            out[backend] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return out


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def judge(case: tuple[nn.Module, torch.Tensor, list], backend) -> dict:
    """One backend on one architecture: ``{"ok", "params_before", "params_after", "max_abs_diff", "error"}``."""
    model, x, zeroed = case  # left as it is: the backend gets a copy
    with torch.no_grad():
        want = model(x)
    row = {"params_before": params(model), "params_after": None, "max_abs_diff": None, "error": None, "ok": False}
    try:
        small = backend(copy.deepcopy(model), x, zeroed).eval()
        with torch.no_grad():
            got = small(x)
        row["params_after"] = params(small)
        row["max_abs_diff"] = float((got - want).abs().max()) if got.shape == want.shape else None
        if row["max_abs_diff"] is None:
            row["error"] = f"output shape {tuple(got.shape)} instead of {tuple(want.shape)}"
        elif row["params_after"] >= row["params_before"]:
            row["error"] = "removed nothing"
        elif row["max_abs_diff"] > TOLERANCE:
            row["error"] = "output changed"
        else:
            row["ok"] = True
    except Exception as exc:  # noqa: BLE001 - a backend's failure on a model is the measurement
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "shrink-backends.json"))
    args = p.parse_args(argv)
    try:
        import torch_pruning as tp
    except ImportError:
        sys.exit("benchmarks/shrink_backends.py needs torch-pruning: pip install -e '.[bench]'")
    backends = {"sabr": with_sabr, "torch_pruning": with_torch_pruning}
    rows = []
    for name in args.models:
        case = prepared(name)  # built, traced and zeroed once for both backends and the reach
        rows.append({"model": name, **{b: judge(case, fn) for b, fn in backends.items()}, "half_removed": reach(case)})
    head = ("| model | params | sabr: params after, max diff | torch_pruning: the same | half of each own group "
            "removed: sabr's graph | Torch-Pruning's |")
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for b in backends:
            c = r[b]
            after = f"{c['params_after'] / 1e6:.2f}M" if c["params_after"] is not None else "-"
            diff = f"{c['max_abs_diff']:.1e}" if c["max_abs_diff"] is not None else "-"
            cells.append(f"{'ok' if c['ok'] else 'FAILS'}: {after}, {diff}" + ("" if c["ok"] else f" ({c['error']})"))
        for b in backends:
            left = r["half_removed"][b]
            cells.append(f"{left / 1e6:.2f}M" if isinstance(left, int) else f"FAILS ({left})")
        lines.append(f"| {r['model']} | {r['sabr']['params_before'] / 1e6:.2f}M | {' | '.join(cells)} |")
    passed = {b: sum(r[b]["ok"] for r in rows) for b in backends}
    lines.append(f"| models passed | {len(rows)} | {passed['sabr']} | {passed['torch_pruning']} | | |")
    print("\n".join(lines))
    Path(args.json).write_text(json.dumps({
        "command": "python benchmarks/shrink_backends.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__, "torch_pruning": tp.__version__, "tolerance": TOLERANCE, "rows": rows,
        "passed": passed}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
