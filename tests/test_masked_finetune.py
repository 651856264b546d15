"""zero_masks / apply_masks (sabr.pruning), train_epoch's after_step hook and finetune_masked (sabr.pipeline)."""

import pytest
import torch

from sabr import RunConfig, apply_masks, prune, sparsity_report, zero_masks
from sabr.pipeline import finetune_masked, prepare
from sabr.train import Split, train_epoch
from sabr.data import Preprocess


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def test_masks_restore_zeros():
    m = _model()
    prune(m, teta1=1.0)
    masks = zero_masks(m)
    assert set(masks) == {"1.weight", "3.weight"}
    zeros = sparsity_report(m).nonzero
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    apply_masks(m, masks)
    assert sparsity_report(m).nonzero == zeros


def test_after_step_runs_once_per_batch():
    m = _model()
    split = Split(torch.randint(0, 255, (40, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (40,)))
    calls = []
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    train_epoch(m, opt, split, Preprocess(8, 1), torch.device("cpu"), 16, torch.Generator().manual_seed(0),
                after_step=lambda: calls.append(1))
    assert len(calls) == 3


def test_finetune_masked_keeps_sparsity():
    exp = prepare(RunConfig(max_per_class=20, epochs_base=1, device="cpu"), progress=False)
    model = exp.new_model()
    prune(model, teta1=1.0)
    before = sparsity_report(model)
    model, rows = finetune_masked(exp, model, epochs=2)
    after = sparsity_report(model)
    assert len(rows) == 2
    assert after.sparsity >= before.sparsity > 0.2


def test_the_pruning_ramp_is_on_by_default_only_where_the_budget_chooses_the_factor():
    from sabr.config import FINETUNE_RAMP_EPOCHS

    assert RunConfig().finetunes == FINETUNE_RAMP_EPOCHS == 10
    assert RunConfig(finetune_epochs=3).finetunes == 3 and RunConfig(finetune_epochs=0).finetunes == 0
    for off in (dict(structured=True), dict(prune_teta1=0.2), dict(epsilon=0.01), dict(max_drop=None)):
        assert RunConfig(**off).finetunes == 0, off
    assert RunConfig(structured=True, finetune_epochs=4).finetunes == 4


@pytest.mark.slow
def test_run_with_finetune_epochs_fine_tunes_the_pruned_model_and_keeps_its_zeros(tmp_path):
    import json

    from sabr import load_run
    from sabr.cli import main

    out = tmp_path / "run"
    # a fixed, strong factor and a 100-point budget: every fine-tune epoch is within it, so a trained epoch is
    # kept (when the starting model stays the most accurate, the check below would be empty)
    code = main(["run", "--max-per-class", "30", "--epochs-base", "2", "--epochs-sabr", "2", "--teta1", "0.01",
                 "--finetune-epochs", "2", "--sweep", "1.0", "--prune-teta1", "1.0", "--max-drop", "1",
                 "--out", str(out), "--quiet"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    p = s["pruned"]
    assert p["finetune_epochs"] == 2 and 0.0 <= p["test_accuracy_before_finetune"] <= 1.0
    assert (out / "history_finetune.csv").read_text().count("\n") == 3  # header + 2 epochs
    model, _ = load_run(out, "pruned")  # the checkpoint is the fine-tuned model
    # the model before the fine-tune: the SABR checkpoint pruned again at the fixed factor; every zero it has is
    # still zero in the fine-tuned checkpoint, whose weights did train
    assert s["budget"]["prune_teta1"] == 1.0 and "prune_teta1_before_finetune" not in p
    before, _ = load_run(out, "sabr")
    prune(before, teta1=1.0, gamma=s["config"]["gamma"])
    tuned = model.state_dict()
    zeros = {name: w == 0 for name, w in before.state_dict().items() if name.endswith("weight") and w.dim() > 1}
    assert sum(int(z.sum()) for z in zeros.values()) > 1000  # a pruned model, not a dense one
    assert all(not torch.equal(before.state_dict()[name], tuned[name]) for name in zeros)  # a trained epoch kept
    assert all(bool((tuned[name][z] == 0).all()) for name, z in zeros.items())
    assert sparsity_report(model).nonzero == p["nonzero"] == sum(l["nonzero"] for l in s["layers"])
    assert "masked fine-tune epochs" in (out / "summary.md").read_text()
