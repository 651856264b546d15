"""Models from torchvision and from the user's own file, end to end: run, export, bench, recognize; the trust
flag; the API's save_checkpoint; a user file changed after training."""

import json

import pytest
import torch
from torch import nn

import sabr
from sabr import CheckpointError, cli

from .conftest import shared_path

NET = """
from torch import nn


def build(num_classes, in_chans=3):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(64, num_classes))
"""


def _run(out, model, *extra):
    data = shared_path("sign-language-digits", "Dataset")
    argv = ["run", "--quiet", "--data", str(data), "--model", model, "--image-size", "32", "--max-per-class", "10",
            "--epochs-base", "1", "--epochs-sabr", "1", "--batch-size", "16", "--sweep", "0.2", "--device", "cpu",
            "--out", str(out), *extra]
    assert cli.main(argv) == 0
    return data


def _tools(run, data, tmp_path, trust):
    flag = ["--trust-model-code"] if trust else []
    assert cli.main(["export", "--quiet", "--run", str(run), "--format", "onnx", *flag]) == 0
    assert (run / "export" / "pruned-onnx.onnx").is_file()
    assert cli.main(["bench", "--quiet", "--run", str(run), "--runs", "2", "--warmup", "1", "--batch-sizes", "1",
                     *flag]) == 0
    frames = tmp_path / "frames"
    assert cli.main(["recognize", "--quiet", "--model", str(run), "--source", str(data / "3"), "--headless",
                     "--out", str(frames), "--max-frames", "2", *flag]) == 0
    assert len((frames / "predictions.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_torchvision_resnet18_end_to_end(tmp_path):
    run = tmp_path / "resnet18"
    data = _run(run, "resnet18")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"]["name"] == "resnet18"
    _tools(run, data, tmp_path, trust=False)


@pytest.mark.slow
def test_user_file_end_to_end_and_trust(tmp_path, capsys):
    net = tmp_path / "my_net.py"
    net.write_text(NET)
    run = tmp_path / "mine"
    data = _run(run, f"{net}:build")
    meta = json.loads((run / "pruned.json").read_text())
    assert meta["model"]["name"] == "my_net.py:build" and "@sha256:" in meta["model"]["source"]
    capsys.readouterr()
    assert cli.main(["export", "--run", str(run), "--format", "onnx"]) == 2  # user code: not without the flag
    assert "--trust-model-code" in capsys.readouterr().err
    _tools(run, data, tmp_path, trust=True)
    net.write_text(NET + "\n# edited after training\n")
    assert cli.main(["bench", "--run", str(run), "--trust-model-code"]) == 2
    err = capsys.readouterr().err.strip()
    assert "changed after training" in err and err.count("\n") == 0


def test_loading_user_code_needs_trust_and_the_same_file(tmp_path):
    net = tmp_path / "my_net.py"
    net.write_text(NET)
    model = sabr.create_model(f"{net}:build", num_classes=3, in_chans=1, image_size=16)
    pre = sabr.Preprocess(16, 1)
    path = sabr.save_checkpoint(model, tmp_path / "mine.safetensors", source=f"{net}:build", classes=["a", "b", "c"],
                                preprocess=pre)
    with pytest.raises(CheckpointError, match="--trust-model-code"):
        sabr.load_model(path)
    loaded, meta = sabr.load_model(path, trust_model_code=True)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(loaded(x), model.eval()(x)) and meta["classes"] == ["a", "b", "c"]
    net.write_text(NET.replace("nn.ReLU(), nn.MaxPool2d", "nn.Tanh(), nn.MaxPool2d"))
    with pytest.raises(CheckpointError, match="changed after training"):
        sabr.load_model(path, trust_model_code=True)


@pytest.mark.slow
def test_save_checkpoint_from_the_api_feeds_every_tool(tmp_path):
    model = sabr.create_model("resnet18", num_classes=4, in_chans=3, image_size=32)
    sabr.prune(model)
    path = sabr.save_checkpoint(model, tmp_path / "own.safetensors", source="resnet18", classes=list("abcd"),
                                preprocess=sabr.Preprocess(32, 3))
    result = sabr.export_run(path, "sparse")
    assert result["max_abs_diff"] < 1e-4 and (tmp_path / "export" / "own-sparse.safetensors").is_file()
    bench = sabr.bench_run(path, batch_sizes=(1,), runs=1, warmup=0)
    assert bench["model"]["name"] == "resnet18" and bench["macs_pruned"] < bench["macs_dense"]
    with pytest.raises(CheckpointError, match="does not fit"):
        sabr.save_checkpoint(nn.Linear(2, 2), tmp_path / "bad.safetensors", source="resnet18", classes=list("ab"),
                             preprocess=sabr.Preprocess(32, 3))


def test_resume_of_a_user_code_run_needs_trust(tmp_path):
    from sabr.pipeline import resume
    from sabr.rundir import RunDir

    RunDir(tmp_path).write_config({"model": f"{tmp_path}/my_net.py:build@sha256:{'0' * 64}"})
    with pytest.raises(CheckpointError, match="--trust-model-code"):
        resume(tmp_path)
