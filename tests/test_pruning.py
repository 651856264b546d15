import numpy as np
import pytest
import torch
from torch import nn

from sabr import prune, prune_threshold


def test_threshold_is_numpys_population_std_as_in_the_seed():
    values = np.array([0.001, -0.002, 0.5, -0.4, 0.3, 0.0005, -0.6, 0.05], dtype=np.float32)
    w = torch.from_numpy(values)
    kept = values[np.abs(values) >= 0.1 * np.std(values)]  # the seed's code: np.std, no Bessel correction
    assert prune_threshold(w, teta1=0.2, gamma=0.1) == pytest.approx(0.2 * float(np.std(kept)), rel=1e-6)
    # by hand: np.std(w) = 0.32781, so gamma * std = 0.032781; kept = [0.5, -0.4, 0.3, -0.6, 0.05];
    # np.std(kept) = 0.41424; threshold = 0.2 * 0.41424 = 0.082849 (torch's unbiased std gave 0.092628)
    assert kept.tolist() == pytest.approx([0.5, -0.4, 0.3, -0.6, 0.05])
    assert prune_threshold(w) == pytest.approx(0.082849, abs=1e-6)


def test_empty_kept_falls_back_to_all_weights():
    w = torch.tensor([1.0, 1.0, 1.0, 1.0])  # std 0: every |w| >= 0 is kept, threshold 0
    assert prune_threshold(w) == 0.0
    w = torch.tensor([0.1, -0.1, 0.1, -0.1])
    assert prune_threshold(w, teta1=0.5, gamma=100.0) == pytest.approx(0.5 * float(np.std(w.numpy())))


def test_prune_makes_exact_zeros_and_reports():
    model = nn.Sequential(nn.Linear(4, 3, bias=True), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.001, -0.002, 0.5, -0.4], [0.3, 0.0005, -0.6, 0.05],
                                            [0.2, -0.3, 0.0001, 0.4]]))
    w0 = model[0].weight.detach().clone()
    threshold = prune_threshold(w0)
    stats = prune(model)
    assert [s.name for s in stats] == ["0.weight", "1.weight"]
    expected = torch.where(w0.abs() < threshold, torch.zeros_like(w0), w0)
    assert torch.equal(model[0].weight, expected)
    assert stats[0].nonzero == int((expected != 0).sum()) and stats[0].total == 12
    assert stats[0].sparsity == pytest.approx(1 - stats[0].nonzero / 12)
    assert stats[0].threshold == pytest.approx(threshold)


def test_fixed_epsilon_mode_and_bias_untouched():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.01, 0.2, -0.05], [0.3, -0.001, 0.04]]))
        model.bias.fill_(1e-6)
    stats = prune(model, epsilon=0.045)
    assert torch.allclose(model.weight, torch.tensor([[0.0, 0.2, -0.05], [0.3, 0.0, 0.0]]))
    assert stats[0].threshold == 0.045 and stats[0].nonzero == 3
    assert torch.all(model.bias == 1e-6)
