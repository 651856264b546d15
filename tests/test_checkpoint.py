import json
import pickle

import pytest
import torch

from sabr import CheckpointError, create_model, load_checkpoint, save_checkpoint
from sabr.data import Preprocess


def meta(num_classes=3):
    return {"model": {"name": "compact_cnn", "num_classes": num_classes, "in_chans": 1, "image_size": 8},
            "classes": ["a", "b", "c"][:num_classes] + [str(i) for i in range(3, num_classes)],
            "preprocess": Preprocess(8, 1, (0.3,), (0.4,)).to_dict()}


def test_round_trip_restores_identical_weights_and_transform(tmp_path):
    model = create_model("compact_cnn", 3, 1, 8)
    path = save_checkpoint(model, tmp_path / "m", meta())
    assert path.suffix == ".safetensors" and (tmp_path / "m.json").is_file()
    loaded, m = load_checkpoint(path)
    assert not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert m["classes"] == ["a", "b", "c"] and m["transform"] == Preprocess(8, 1, (0.3,), (0.4,))


def test_saving_is_byte_reproducible(tmp_path):
    model = create_model("compact_cnn", 3, 1, 8)
    files = [save_checkpoint(model, tmp_path / f"m{i}", meta()).read_bytes() for i in range(8)]
    assert all(f == files[0] for f in files)


def test_other_model_or_class_count_is_refused(tmp_path):
    save_checkpoint(create_model("compact_cnn", 3, 1, 8), tmp_path / "m", meta())
    edited = json.loads((tmp_path / "m.json").read_text())
    edited["model"]["num_classes"], edited["classes"] = 5, list("abcde")  # consistent metadata, other weights
    (tmp_path / "m.json").write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="another architecture or number of classes"):
        load_checkpoint(tmp_path / "m.safetensors")


class Boom:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_never_executed(tmp_path):
    path = tmp_path / "evil.safetensors"
    marker = tmp_path / "pickle-was-executed"
    path.write_bytes(pickle.dumps({"weight": Boom(marker)}))
    (tmp_path / "evil.json").write_text('{"model": {"name": "compact_cnn", "num_classes": 3, "in_chans": 1, "image_size": 8}, '
                                          f'"weights_sha256": "{"0" * 64}"}}')
    with pytest.raises(CheckpointError, match="only loads safetensors"):
        load_checkpoint(path)
    assert not marker.exists()
