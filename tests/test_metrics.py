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


def resnet18_macs(size: int, classes: int) -> int:
    """ResNet-18 by hand: 7x7/2 stem, 3x3/2 max-pool, four stages of two basic blocks (3x3 convs), 1x1/2
    downsampling shortcuts from stage 2 on, global pool, fc."""
    h = (size + 6 - 7) // 2 + 1
    total = 64 * 3 * 49 * h * h
    h = (h + 2 - 3) // 2 + 1
    cin = 64
    for c in [64, 128, 256, 512]:
        if c != cin:
            h = (h + 2 - 3) // 2 + 1
            total += c * cin * h * h                                # 1x1 stride-2 shortcut
        total += c * cin * 9 * h * h + 3 * c * c * 9 * h * h        # four 3x3 convs per stage
        cin = c
    return total + 512 * classes


def _divisible(v: float) -> int:
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


def mobilenet_v3_small_macs(size: int, classes: int) -> int:
    """MobileNetV3-Small by hand from its (in, kernel, expanded, out, SE, stride) table, SE blocks included."""
    h = conv_out(size, 2)
    total = 16 * 3 * 9 * h * h
    for cin, k, exp, cout, se, s in [(16, 3, 16, 16, True, 2), (16, 3, 72, 24, False, 2), (24, 3, 88, 24, False, 1),
                                     (24, 5, 96, 40, True, 2), (40, 5, 240, 40, True, 1), (40, 5, 240, 40, True, 1),
                                     (40, 5, 120, 48, True, 1), (48, 5, 144, 48, True, 1), (48, 5, 288, 96, True, 2),
                                     (96, 5, 576, 96, True, 1), (96, 5, 576, 96, True, 1)]:
        if exp != cin:
            total += exp * cin * h * h                          # 1x1 expand
        h = (h + 2 * ((k - 1) // 2) - k) // s + 1
        total += exp * k * k * h * h                            # depthwise
        if se:
            total += 2 * exp * _divisible(exp // 4)             # squeeze-excite: two 1x1 convs on a 1x1 map
        total += cout * exp * h * h                             # 1x1 project
    total += 576 * 96 * h * h                                   # last 1x1 conv
    return total + 576 * 1024 + 1024 * classes


def small_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


def vit_macs(size=32, patch=8, layers=2, dim=64, mlp=128, classes=10, chans=3) -> int:
    """ViT by hand: patch embedding; per layer QKV, q k^T, attn v, output projection, MLP; class-token head."""
    n = (size // patch) ** 2
    t = n + 1  # patches + class token
    per_layer = t * dim * 3 * dim + 2 * t * t * dim + t * dim * dim + 2 * t * dim * mlp
    return dim * chans * patch * patch * n + layers * per_layer + dim * classes


def test_resnet18_macs_match_analytic_count():
    model = create_model("resnet18", num_classes=10, in_chans=3, image_size=64)
    assert count_macs(model, torch.zeros(2, 3, 64, 64)).macs_dense == resnet18_macs(64, 10)
    assert resnet18_macs(224, 1000) == 1_814_073_344  # torchvision's "1.81 GFLOPS" (multiply-adds)


def test_mobilenet_v3_small_macs_match_analytic_count():
    model = create_model("mobilenet_v3_small", num_classes=1000, in_chans=3, image_size=224)
    report = count_macs(model, torch.zeros(1, 3, 224, 224))
    assert report.macs_dense == mobilenet_v3_small_macs(224, 1000)
    assert 55e6 < report.macs_dense < 60e6  # torchvision's "0.06 GFLOPS"


def test_vit_macs_count_attention_and_every_projection():
    model = small_vit()
    report = count_macs(model, torch.zeros(2, 3, 32, 32))
    assert report.macs_dense == vit_macs()
    weights = {layer.weight for layer in report.layers}
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in weights
    assert "encoder.layers.encoder_layer_0.self_attention.out_proj.weight" in weights
    attention = [l for l in report.layers if l.weight == ""]
    assert sum(l.macs_dense for l in attention) == 2 * 2 * 17 * 17 * 64  # q k^T and attn v, two layers


def test_vit_pruned_macs_scale_only_weight_layers():
    model = small_vit()
    qkv = model.encoder.layers[0].self_attention.in_proj_weight
    with torch.no_grad():
        qkv[: qkv.shape[0] // 2] = 0.0
    report = count_macs(model, torch.zeros(1, 3, 32, 32))
    t, d = 17, 64
    head = d * 10  # torchvision initialises the ViT head to zeros: all of it counts as pruned
    assert report.macs_dense - report.macs_pruned == pytest.approx(t * d * 3 * d / 2 + head)
    for layer in report.layers:
        if layer.weight == "":
            assert layer.macs_pruned == layer.macs_dense


def test_sparsity_report_prints_as_a_table():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0].zero_()
    lines = str(sparsity_report(model)).splitlines()
    assert lines[0].split() == ["tensor", "weights", "non-zero", "sparsity"]
    assert lines[1].split() == ["0.weight", "12", "8", "33.33%"]
    assert lines[-3].split() == ["regularised", "weights", "18", "14", "22.22%"]
    assert lines[-1] == "(exact zeros)"


def test_pruned_macs_leave_out_removed_channels():
    """A channel whose weights are all zero is removed with the next layer's inputs: one MACs figure for the
    pruned model, whatever was zeroed (sabr.metrics.count_pruned_macs)."""
    from sabr.metrics import count_pruned_macs

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0].zero_()
        model[0].bias[0] = 0.0
    macs = count_pruned_macs(model, torch.zeros(1, 4))
    assert macs.macs_dense == 12 + 6
    assert macs.macs_pruned == 8 + 4  # the zeroed neuron's row and the next layer's column both go
    assert count_macs(model, torch.zeros(1, 4)).macs_pruned == 8 + 6  # counted at full shape
