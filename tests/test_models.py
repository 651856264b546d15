import pytest
import torch
from torch import nn

from sabr import ConfigError, create_model, list_models


def n_weights(model):  # the reference counts every parameter named "*weight*"
    return sum(p.numel() for n, p in model.named_parameters() if "weight" in n)


def test_registry_lists_models():
    assert {"compact_cnn", "lenet5", "small_vgg", "vgg11", "mobilenet_v2"} <= set(list_models())
    assert list_models("vgg*") == ["vgg11"]


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
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("resnet9000", 10)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        create_model("compact_cnn", 1, 1, 8)
