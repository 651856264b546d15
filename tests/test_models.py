import pytest
import torch
from torch import nn

import sabr.models as models
from sabr import CheckpointError, ConfigError, create_model, list_models
from sabr.regularizer import default_param_names


def n_weights(model):  # the reference counts every parameter named "*weight*"
    return sum(p.numel() for n, p in model.named_parameters() if "weight" in n)


def test_registry_lists_models():
    assert {"compact_cnn", "lenet5", "small_vgg", "vgg11", "mobilenet_v2"} <= set(list_models())
    assert {"vgg11", "vgg11_bn", "resnet18", "vit_b_16", "mobilenet_v3_small"} <= set(list_models())  # torchvision
    assert list_models("resnet1*") == ["resnet101", "resnet152", "resnet18"]


def test_reference_weight_counts_for_14_classes():
    with torch.device("meta"):  # shapes only: no time spent initialising 22M weights
        assert n_weights(create_model("vgg11", 14, 3, 128)) == 22_069_952
        assert n_weights(create_model("mobilenet_v2", 14, 3, 128)) == 2_224_736


@pytest.mark.parametrize("name,chans,size", [("compact_cnn", 1, 8), ("lenet5", 1, 28), ("small_vgg", 1, 28),
                                             ("vgg11", 1, 32), ("mobilenet_v2", 3, 32), ("compact_cnn", 3, 20)])
def test_models_output_logits_for_any_classes_and_channels(name, chans, size):
    model = create_model(name, num_classes=7, in_chans=chans, image_size=size).eval()
    out = model(torch.randn(2, chans, size, size))
    assert out.shape == (2, 7)
    assert not isinstance(list(model.modules())[-1], nn.Softmax)
    assert not torch.allclose(out.exp().sum(1), torch.ones(2))  # logits, not probabilities


def test_clear_errors():
    with pytest.raises(ConfigError, match="--image-size 32"):
        create_model("vgg11", 10, 3, 8)
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'.*file.py:factory"):
        create_model("resnet9000", 10)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        create_model("compact_cnn", 1, 1, 8)


# --------------------------------------------------------------------------- torchvision, timm, user code
# a representative subset (every family's smallest member) that runs a real forward pass in the fast suite
REAL = ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_x_400mf",
        "googlenet", "swin_t", "vit_b_32"]


def _one_sentence(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text and text.endswith(".")
    return text


@pytest.mark.parametrize("name", REAL)
def test_torchvision_models_adapt_head_and_stem(name):
    size = 64 if name not in ("vit_b_32", "swin_t") else 32
    model = create_model(name, num_classes=5, in_chans=1, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 5)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.torchvision_names())
def test_every_torchvision_model_builds_or_is_refused_in_one_sentence(name):
    device = "cpu" if name.startswith("regnet") else "meta"  # RegNet computes its widths with real tensors
    with torch.device(device):
        try:
            model = create_model(name, num_classes=3, in_chans=1, image_size=32)
        except ConfigError as exc:
            assert "--image-size" in _one_sentence(exc) and name in str(exc)
            return
        with torch.no_grad():
            assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


def test_too_small_images_are_refused_with_the_minimum():
    with torch.device("meta"):
        with pytest.raises(ConfigError, match="at least 63x63 pixels, got 32.*--image-size 63") as exc:
            create_model("alexnet", 4, 3, 32)
        _one_sentence(exc.value)
        with pytest.raises(ConfigError, match="at least 16x16 pixels, got 40"):
            create_model("vit_b_16", 4, 3, 40)  # patches of 16 must tile the image


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:mobilenetv3_small_050", "timm:vit_tiny_patch16_224"])
def test_timm_models(name):
    pytest.importorskip("timm")
    model = create_model(name, num_classes=4, in_chans=1, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert "timm:resnet18" in list_models("timm:resnet1*")


NET = """
import torch
from torch import nn


def build(num_classes, in_chans=3):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


def not_a_model(num_classes):
    return 42
"""


def test_user_file_factory_gets_the_arguments_it_accepts(tmp_path):
    (tmp_path / "my_net.py").write_text(NET)
    model = create_model(f"{tmp_path}/my_net.py:build", num_classes=6, in_chans=1, image_size=16)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 6)
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        create_model(f"{tmp_path}/my_net.py:not_a_model", 6, 1, 16)
    with pytest.raises(ConfigError, match="no function 'nope'"):
        create_model(f"{tmp_path}/my_net.py:nope", 6, 1, 16)
    with pytest.raises(ConfigError, match="does not exist"):
        create_model(f"{tmp_path}/missing.py:build", 6, 1, 16)
    with pytest.raises(ConfigError, match="takes no `pretrained`"):
        create_model(f"{tmp_path}/my_net.py:build", 6, 1, 16, pretrained=True)


def test_module_factory(tmp_path, monkeypatch):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "nets.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert create_model("userpkg.nets:build", 3, 3, 8)(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    pinned = models.pin("userpkg.nets:build")
    assert pinned.startswith("userpkg.nets:build@sha256:") and models.display_name(pinned) == "userpkg.nets:build"


def test_pinned_user_file_is_refused_once_changed(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(NET)
    pinned = models.pin("my_net.py:build".replace("my_net.py", str(path)))
    assert pinned.startswith(str(path.resolve()) + ":build@sha256:") and models.display_name(pinned) == "my_net.py:build"
    create_model(pinned, 3, 3, 8)
    path.write_text(NET + "\n# edited\n")
    with pytest.raises(CheckpointError, match="changed after training") as exc:
        create_model(pinned, 3, 3, 8)
    _one_sentence(exc.value)


def test_attention_projections_are_regularised():
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)
    names = default_param_names(vit)
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in names
    assert "encoder.layers.encoder_layer_0.self_attention.out_proj.weight" in names
    separate = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    assert default_param_names(separate) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]


def test_resnet20_is_the_cifar_resnet_with_projection_shortcuts():
    with torch.device("meta"):
        model = create_model("resnet20", 10, 3, 32)
    assert sum(p.numel() for p in model.parameters()) == 269_722 + 2_752  # He et al.'s 0.27M + the two projections
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19 and [c.out_channels for c in convs[::6]] == [16, 16, 32, 64]  # 19 convs + fc = 20 layers
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 21


@pytest.mark.parametrize("chans", [1, 3])
def test_resnet20_takes_28_pixels_with_one_or_three_channels(chans):
    model = create_model("resnet20", num_classes=10, in_chans=chans, image_size=28).eval()
    assert model(torch.randn(2, chans, 28, 28)).shape == (2, 10)
    assert model.conv1.in_channels == chans


def test_sabr_models_lists_resnet20(capsys):
    from sabr import cli

    assert cli.main(["models", "resnet*"]) == 0
    assert "resnet20" in capsys.readouterr().out.split()
