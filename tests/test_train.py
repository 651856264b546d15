import pytest
import torch

from sabr import SabrError
from sabr.train import resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(SabrError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
