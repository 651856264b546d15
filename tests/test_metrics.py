import pytest
import torch
from torch import nn

from sabr import count_macs, create_model, sparsity_report


def conv_out(h: int, stride: int) -> int:
    return (h + 2 - 3) // stride + 1  # 3x3, padding 1


def vgg11_macs(size: int, classes: int, in_chans: int = 3) -> int:
    """VGG11 by hand: 3x3 convs keep the size, each 'M' halves it; adaptive pool to 7x7; our head."""
    total, cin, h = 0, in_chans, size
    for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if v == "M":
            h //= 2
        else:
            total += v * cin * 9 * h * h
            cin = v
    return total + 512 * 7 * 7 * 512 + 512 * classes


def mobilenet_v2_macs(size: int, classes: int) -> int:
    """MobileNetV2 by hand from the paper's (t, c, n, s) table; depthwise convs cost C * 9 * H * W."""
    h = conv_out(size, 2)
    total, cin = 32 * 3 * 9 * h * h, 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1:
                total += hidden * cin * h * h          # 1x1 expand
            h = conv_out(h, stride)
            total += hidden * 9 * h * h                # 3x3 depthwise (groups = hidden)
            total += c * hidden * h * h                # 1x1 project
            cin = c
    total += 1280 * cin * h * h                        # last 1x1 conv
    return total + 1280 * classes


@pytest.mark.parametrize("size", [32])
def test_vgg11_macs_match_analytic_count(size):
    model = create_model("vgg11", num_classes=14, in_chans=3, image_size=size)
    report = count_macs(model, torch.zeros(1, 3, size, size))
    assert report.macs_dense == vgg11_macs(size, 14)
    assert len(report.layers) == 8 + 2
    assert report.reduction == 0.0 and report.macs_pruned == report.macs_dense


def test_mobilenet_v2_macs_match_analytic_count_including_depthwise():
    size = 224
    model = create_model("mobilenet_v2", num_classes=1000, in_chans=3, image_size=size)
    report = count_macs(model, torch.zeros(1, 3, size, size))
    assert report.macs_dense == mobilenet_v2_macs(size, 1000)
    assert 295e6 < report.macs_dense < 305e6  # the paper's "300M multiply-adds"
    depthwise = [l for l in report.layers if l.name == "features.1.conv.0.0"][0]
    assert depthwise.macs_dense == 32 * 9 * 112 * 112  # groups=32: one 3x3 filter per channel


def test_mobilenet_v2_small_input_and_batch_independence():
    model = create_model("mobilenet_v2", num_classes=10, in_chans=3, image_size=64)
    one = count_macs(model, torch.zeros(1, 3, 64, 64))
    four = count_macs(model, torch.zeros(4, 3, 64, 64))
    assert one.macs_dense == four.macs_dense == mobilenet_v2_macs(64, 10)


def test_pruned_macs_scale_with_weight_sparsity():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    with torch.no_grad():
        model[0].weight[:2] = 0.0  # half of the conv weights
    report = count_macs(model, torch.zeros(1, 2, 5, 5))
    conv, fc = report.layers
    assert conv.macs_dense == 4 * 2 * 9 * 25 and conv.sparsity == 0.5 and conv.macs_pruned == conv.macs_dense / 2
    assert fc.macs_dense == 100 * 3 and fc.macs_pruned == fc.macs_dense
    assert report.reduction == pytest.approx(1 - (900 + 300) / (1800 + 300))
    given = count_macs(model, torch.zeros(1, 2, 5, 5), sparsity={"2.weight": 0.9})
    assert given.layers[1].macs_pruned == pytest.approx(30)


def test_linear_on_sequences_counts_every_position():
    model = nn.Linear(8, 4)
    assert count_macs(model, torch.zeros(2, 5, 8)).macs_dense == 5 * 8 * 4


def test_sparsity_report_counts_exact_and_near_zeros():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[0] = 0.0
        model[0].weight[1] = 1e-7
        model[0].bias.zero_()
        model[1].weight.fill_(0.5)
    r = sparsity_report(model)
    assert [l.nonzero for l in r.layers] == [12, 8]
    assert r.total == 24 and r.nonzero == 20 and r.sparsity == pytest.approx(4 / 24)
    assert r.all_total == 28 and r.all_nonzero == 20 and r.all_sparsity == pytest.approx(8 / 28)
    near = sparsity_report(model, eps=1e-5)
    assert near.nonzero == 16
