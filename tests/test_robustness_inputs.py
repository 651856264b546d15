"""Issue 32, the input half: finite numbers and stated bounds everywhere a number enters (API, Lightning
callback, command line, YAML, checkpoint metadata), models with non-finite outputs refused, and the last
tracebacks turned into one sentence with exit code 2 -- each checked before anything is written. Real
files and real (tiny) models."""

from __future__ import annotations

import gzip
import json
import logging
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sabr import SABR, prune
from sabr.checkpoint import save_checkpoint
from sabr.data import Preprocess
from sabr.errors import ConfigError
from sabr.models import create_model
from sabr.pruning import prunable_sparsity

from .conftest import TINY
from ._apps_fixtures import checkpoint_and_frames
from .test_robustness import _cli, _one_sentence

NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def _keep_threads():
    """`sabr recognize` sets torch's thread count (--threads, default 1); later tests compare runs made with
    the count they started with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


# --------------------------------------------------------------------------- the Python API
@pytest.mark.parametrize("kw, words", [
    (dict(teta1=NAN), "teta1 must be a finite number"),
    (dict(growth_rate=INF), "growth_rate must be a finite number"),
    (dict(decrease_rate=NAN), "decrease_rate"),
    (dict(accuracy_threshold=NAN), "accuracy_threshold"),
    (dict(zero_eps=NAN), "zero_eps"),
    (dict(k_epoch=1.5), "k_epoch must be a whole number"),
    (dict(steps_per_epoch=NAN), "steps_per_epoch"),
])
def test_sabr_refuses_numbers_that_are_not_finite(kw, words):
    with pytest.raises(ConfigError, match=words):
        SABR(_tiny(), **kw)  # trained to NaN weights with exit 0


@pytest.mark.parametrize("kw", [dict(teta1=NAN), dict(gamma=NAN), dict(epsilon=NAN), dict(teta1=INF),
                                dict(epsilon=-1.0)])
def test_prune_refuses_numbers_that_are_not_finite(kw):
    model = _tiny()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=next(iter(kw))):
        prune(model, **kw)  # pruned nothing, silently
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if "epsilon" not in kw:
        with pytest.raises(ConfigError):
            prunable_sparsity(model, **kw)


@pytest.mark.parametrize("kw, words", [(dict(mean=(NAN,)), "mean must be a finite number"),
                                       (dict(std=(0.0,)), "std must be > 0"), (dict(std=(1, 2)), "one per channel")])
def test_preprocess_refuses_a_normalisation_that_is_not_finite(kw, words):
    with pytest.raises(ConfigError, match=words):
        Preprocess(8, 1, **kw)  # a std of 0 made every confidence NaN


def test_lightning_callback_refuses_nan_when_made():
    pytest.importorskip("lightning")
    from sabr.integrations.lightning import SABRCallback

    with pytest.raises(ConfigError, match="teta1 must be a finite number"):
        SABRCallback(teta1=NAN)


def test_lightning_callback_says_once_that_no_validation_loop_ran(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from sabr.integrations.lightning import SABRCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _tiny()

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    trainer = pl.Trainer(max_epochs=3, callbacks=[SABRCallback()], accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="without a validation loop") as seen:
        trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    assert sum("validation loop" in str(w.message) for w in seen) == 1
    assert "val_dataloaders=" in str(next(w for w in seen if "validation loop" in str(w.message)).message)


# --------------------------------------------------------------------------- the command line and YAML
@pytest.mark.parametrize("text, words", [  # each a tiny run were it accepted (the first three: for ever)
    ("epochs_base: 1e35\nepochs_sabr: 1\n", ["epochs_base must be <= 100000"]),  # trained for ever
    ("epochs_base: 1\nepochs_sabr: 100001\n", ["epochs_sabr must be <= 100000"]),
    ("epochs_base: 1\nepochs_sabr: 1\nfinetune_epochs: 1e12\n", ["finetune_epochs must be <="]),
    ("epochs_base: 1\nepochs_sabr: 1\nbatch_size: 1e9\n", ["batch_size must be <= 65536"]),
    ("epochs_base: 2\nepochs-base: 1\nepochs_sabr: 1\n", ["gives epochs_base twice"]),  # last won, silently
    ("lr: 0.1\nlr: 0.2\nepochs_base: 1\nepochs_sabr: 1\n", ["gives lr twice", "line 2"]),
])
def test_config_bounds_and_repeated_keys_are_refused_before_any_work(text, words, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    flags = ["--quiet", "--device", "cpu", "--max-per-class", "10", "--sweep", "0.2"]
    code, err = _cli(["run", *flags, "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, *words)
    assert not (tmp_path / "o").exists()


def test_a_config_that_is_not_a_regular_file_is_named_so(tmp_path, capsys):
    code, err = _cli(["run", *TINY, "--config", "/dev/zero", "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "/dev/zero is not a regular file")  # said "does not exist"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("line", ["model: 12", "model: 2024-01-02", "data: 2024-01-02 10:00:00"])
def test_resume_with_odd_yaml_values_is_one_sentence(line, runs, tmp_path, capsys):
    folder = tmp_path / "killed"
    shutil.copytree(runs["killed"], folder)
    config = folder / "config.yaml"
    key = line.split(":")[0]
    config.write_text("\n".join(line if row.startswith(key + ":") else row
                                for row in config.read_text().splitlines()) + "\n")
    code, err = _cli(["run", "--quiet", "--resume", str(folder)], capsys)  # TypeError for model: 12
    assert code == 2 and err.count("error:") == 1, err
    assert (folder / "resume.safetensors").is_file()


# --------------------------------------------------------------------------- IDX folders
def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _idx_folder(root: Path, images: np.ndarray, n_classes: int = 10) -> Path:
    root.mkdir()
    labels = np.arange(len(images)) % n_classes
    _idx(root / "train-images-idx3-ubyte.gz", images)
    _idx(root / "train-labels-idx1-ubyte.gz", labels)
    return root


def test_idx_class_names_that_do_not_match_the_labels_are_refused_before_writing(tmp_path, capsys):
    root = _idx_folder(tmp_path / "idx", np.random.default_rng(0).integers(0, 255, (60, 8, 8)))
    (root / "classes.txt").write_text("a\nb\nc\n")
    code, err = _cli(["run", *TINY, "--data", str(root), "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "classes.txt names 3 classes", "0 .. 9")  # failed mid-training before
    assert not (tmp_path / "o").exists()


def test_idx_images_of_the_wrong_dimension_are_refused(tmp_path, capsys):
    root = _idx_folder(tmp_path / "idx", np.zeros(60))
    code, err = _cli(["run", *TINY, "--data", str(root), "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "1-dimensional", "(count, height, width)")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- checkpoints, export, bench, recognize
@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A checkpoint of a 3-class compact_cnn and a folder of three frames."""
    return checkpoint_and_frames(tmp_path)


def _edit(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _commands(d: Path) -> dict[str, list[str]]:
    ck = str(d / "ck" / "m.safetensors")
    return {"export": ["export", "--quiet", "--run", ck, "--format", "sparse", "--out", str(d / "x.safetensors")],
            "bench": ["bench", "--quiet", "--run", ck, "--runs", "1", "--warmup", "0", "--no-onnx"],
            "recognize": ["recognize", "--quiet", "--model", ck, "--source", str(d / "frames"), "--headless",
                          "--out", str(d / "out")]}


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(export="sparse"), "'export' is 'sparse'"),  # AttributeError
    (lambda m: m["preprocess"].update(mean=["abc"]), "preprocess.mean"),  # ValueError in recognize
    (lambda m: m["preprocess"].update(std=[0]), "the std > 0"),  # NaN confidence in predictions.jsonl
    (lambda m: m["preprocess"].update(std=[float("nan")]), "finite numbers"),
    (lambda m: m.update(calibration={"temperature": "abc", "threshold": 0.5}), "calibration temperature"),
    (lambda m: m.update(calibration={"temperature": 0, "threshold": 0.5}), "calibration temperature"),
    (lambda m: m.update(calibration={"temperature": 1, "threshold": 0.5, "ood": {"score": "x", "threshold": 1}}),
     "calibration.ood"),
    (lambda m: (m["model"].update(num_classes=1_000_000_000), m.pop("classes")), "at most 100,000 classes"),
    (lambda m: (m["model"].update(image_size=1_000_000), m["preprocess"].update(image_size=1_000_000)),
     "4096 pixels"),  # tried to allocate terabytes
])
@pytest.mark.parametrize("command", ["export", "recognize"])
def test_damaged_checkpoint_metadata_is_one_sentence(change, words, command, model_dir, capsys):
    _edit(model_dir / "ck" / "m.json", change)
    code, err = _cli(_commands(model_dir)[command], capsys)
    _one_sentence(code, err, "m.json", words)
    assert not (model_dir / "x.safetensors").exists() and not (model_dir / "out").exists()


@pytest.mark.parametrize("command", ["export", "bench", "recognize"])
def test_a_model_with_nan_weights_is_refused(command, model_dir, capsys):
    model = create_model("compact_cnn", num_classes=3, in_chans=1, image_size=8)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(NAN)
    meta = json.loads((model_dir / "ck" / "m.json").read_text())
    save_checkpoint(model, model_dir / "ck" / "m", {k: meta[k] for k in ("model", "classes", "preprocess")})
    code, err = _cli(_commands(model_dir)[command], capsys)  # exit 0, "sparsity 100%", a 10x "speed-up"
    _one_sentence(code, err, "not finite")
    assert not (model_dir / "x.safetensors").exists() and not (model_dir / "out").exists()


def test_bench_batch_sizes_have_an_upper_bound(model_dir, capsys):
    code, err = _cli([*_commands(model_dir)["bench"], "--batch-sizes", "10000000"], capsys)
    _one_sentence(code, err, "<= 65,536")


def test_predictions_jsonl_stays_json_whatever_the_model_gives(model_dir, tmp_path):
    pytest.importorskip("cv2")
    from sabr.app_config import RecognizeSettings
    from sabr.apps import Recognizer, open_source, recognize
    from sabr.export import load_model

    model, meta = load_model(model_dir / "ck" / "m.safetensors")
    nan_model = lambda x: torch.full((len(x), 3), NAN)  # noqa: E731 (what a model past the checks could give)
    recognize(Recognizer(nan_model, meta), open_source(str(model_dir / "frames")),
              RecognizeSettings(model="m", source="s", headless=True, out=str(tmp_path / "o")))

    def refuse(constant):
        raise AssertionError(f"{constant} in predictions.jsonl")
    rows = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "o" / "predictions.jsonl").open()]
    assert len(rows) == 3 and rows[0]["confidence"] is None


def test_an_roi_outside_the_frame_is_said_not_silently_clamped(model_dir, caplog, capsys):
    pytest.importorskip("cv2")
    with caplog.at_level(logging.WARNING, logger="sabr"):
        code, _ = _cli([*_commands(model_dir)["recognize"], "--roi", "500,500,10,10"], capsys)
    assert code == 0
    said = [r.getMessage() for r in caplog.records if "--roi" in r.getMessage()]
    assert said and "500,500,10,10 does not lie inside the 32x32 frame; using 22,22,10,10" in said[0]
    rows = [json.loads(line) for line in (model_dir / "out" / "predictions.jsonl").open()]
    assert rows[0]["roi"] == [22, 22, 10, 10] and all(math.isfinite(r["confidence"]) for r in rows)


def test_idx_class_names_that_are_not_utf8_are_refused(tmp_path, capsys):
    root = _idx_folder(tmp_path / "idx", np.random.default_rng(0).integers(0, 255, (60, 8, 8)))
    (root / "classes.txt").write_bytes(b"\xff\xfe\x00a\n")
    code, err = _cli(["run", *TINY, "--data", str(root), "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "classes.txt", "UTF-8")
    assert not (tmp_path / "o").exists()
