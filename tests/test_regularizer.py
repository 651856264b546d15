"""SABR's structured option (group-wise L1 on output channels)."""

from __future__ import annotations

import torch
from torch import nn

from sabr import SABR


def test_structured_penalty_is_group_l1_on_output_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4))
    plain, grouped = SABR(model), SABR(model, structured=True)
    expected = sum(plain.lambdas[n] * p.reshape(p.shape[0], -1).norm(dim=1).sum() * (p[0].numel() ** 0.5)
                   for n, p in plain.params.items())
    assert torch.allclose(grouped.penalty(), expected)
    assert not torch.allclose(plain.penalty(), grouped.penalty())
    # same lambdas and schedule; the flag survives a state_dict round trip
    assert plain.lambdas == grouped.lambdas
    again = SABR(model)
    again.load_state_dict(grouped.state_dict())
    assert again.structured and torch.allclose(again.penalty(), expected)

