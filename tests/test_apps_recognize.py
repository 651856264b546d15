import json
import shutil

import numpy as np
import pytest
import torch

from sabr.apps import RecognizeSettings, Recognizer, SourceError, demo_frames, load_any, load_references, open_source, recognize, \
    write_video
from sabr.cli import main
from sabr.data import open_image
from sabr.errors import CheckpointError, DataError

from ._apps_fixtures import sign_folder, sign_photos, tiny_checkpoint  # noqa: F401 (fixture)

KEYS = {"frame", "label", "confidence", "top3", "smoothed_label", "latency_ms"}


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for f in sign_photos(1, [0, 3, 7]):
        shutil.copy(f, folder / f"{f.parent.name}_{f.name}")
    return folder


def test_uses_the_training_preprocessing(tiny_checkpoint):
    rec = Recognizer.from_path(tiny_checkpoint)
    image = np.asarray(open_image(sign_photos(1, [2])[0]).convert("RGB"))
    pred = rec.predict(image)
    with torch.no_grad():
        expected = torch.softmax(rec.model(rec.metadata["transform"](image).unsqueeze(0)), 1)[0].numpy()
    np.testing.assert_allclose(pred.probs, expected, rtol=1e-5, atol=1e-6)
    assert pred.label == int(expected.argmax()) and pred.top3[0] == (pred.label, pytest.approx(pred.confidence))
    assert [k for k, _ in pred.top3] == list(np.argsort(-expected)[:3]) and pred.latency_ms > 0
    info = rec.info()
    assert info.macs_dense > 0 and 0 <= info.sparsity < 1 and "MACs" in info.describe()


def test_headless_image_folder_writes_jsonl_and_frames(tiny_checkpoint, photo_folder, tmp_path):
    rec = Recognizer.from_path(tiny_checkpoint)
    out = tmp_path / "out"
    settings = RecognizeSettings(out=out, headless=True, roi_fraction=1.0, window=2, threshold=0.0, snapshot=1)
    summary = recognize(rec, open_source(photo_folder), settings)
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert summary.frames == len(rows) == 3
    assert [r["frame"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert KEYS <= set(r)
        assert r["label"] in rec.classes and r["label"] == r["top3"][0][0]
        assert len(r["top3"]) == 3 and r["top3"][0][1] >= r["top3"][1][1] >= r["top3"][2][1]
        assert r["smoothed_label"] in rec.classes  # threshold 0: always claimed
        assert r["roi"] == [0, 0, 100, 100]
    # the raw label of each frame is the model's prediction on the whole photo
    for r, f in zip(rows, sorted(photo_folder.iterdir())):
        p = rec.predict(np.asarray(open_image(f).convert("RGB")))
        assert r["label"] == rec.classes[p.label]
    assert sorted(p.name for p in (out / "frames").iterdir()) == sorted(f.stem + ".png" for f in photo_folder.iterdir())
    assert (out / "snapshot.png").is_file()


def test_threshold_withholds_label(tiny_checkpoint, photo_folder, tmp_path):
    rec = Recognizer.from_path(tiny_checkpoint)
    recognize(rec, open_source(photo_folder), RecognizeSettings(out=tmp_path, headless=True, threshold=1.0))
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(r["smoothed_label"] is None for r in rows)


def test_cli_on_a_video_of_real_photos(tiny_checkpoint, tmp_path, capsys):
    images = [np.asarray(open_image(f).convert("RGB")) for f in sign_photos(1, [1, 5])]
    video = tmp_path / "demo.mp4"
    assert write_video(demo_frames(images, hold=3), video, fps=5) == 6
    out = tmp_path / "out"
    code = main(["recognize", "--model", str(tiny_checkpoint), "--source", str(video), "--headless", "--out",
                 str(out), "--window", "3", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sparsity" in printed and "MACs" in printed
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(KEYS <= set(r) for r in rows)
    assert rows[0]["roi"] == [70, 30, 180, 180]  # the default centred square of a 320x240 frame
    assert (out / "annotated.mp4").stat().st_size > 0


def test_clear_errors(tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no .jpg"):
        open_source(empty)
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot read video|no frame"):
        list(open_source(junk))
    (tmp_path / "model.bin").write_text("x")
    with pytest.raises(CheckpointError, match="unknown model format"):
        load_any(tmp_path / "model.bin")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_any(tmp_path / "missing.onnx")
    rec = Recognizer.from_path(tiny_checkpoint)
    refs = tmp_path / "refs"
    refs.mkdir()
    for f in sign_photos(1, [0, 1, 2]):
        shutil.copy(f, refs / f"{f.parent.name}.jpg")
    with pytest.raises(DataError, match="3 images but the model has 10 classes"):
        load_references(rec.classes, refs)
    assert main(["recognize", "--model", str(tiny_checkpoint), "--source", str(empty), "--headless", "--out",
                 str(tmp_path / "o")]) == 2
    assert "no .jpg" in capsys.readouterr().err
    assert main(["recognize", "--model", str(tiny_checkpoint), "--source", str(empty)]) == 2  # no --out, no window


def test_references_from_class_folders(tiny_checkpoint):
    folder = sign_folder()
    refs = load_references([str(i) for i in range(10)], folder)
    assert len(refs) == 10 and all(r.ndim == 3 and r.shape[2] == 3 for r in refs)
    with pytest.raises(DataError, match="classes"):
        load_references(["a", "b"], folder)


def _calibrated_copy(checkpoint, tmp_path, **rule):
    """The tiny checkpoint with a ``calibration`` entry in its metadata (saved again, as `sabr run` would)."""
    from sabr import save_checkpoint
    from sabr.calibration import Calibration

    model, meta = load_any(checkpoint)
    meta = {k: v for k, v in meta.items() if k not in ("transform", "weights_sha256")}
    (tmp_path / "calibrated").mkdir(exist_ok=True)
    return save_checkpoint(model, tmp_path / "calibrated" / "pruned", meta | {"calibration": Calibration(**rule).to_dict()})


def test_the_models_temperature_and_threshold_are_applied_and_the_flag_overrides(tiny_checkpoint, tmp_path):
    rec = Recognizer.from_path(_calibrated_copy(tiny_checkpoint, tmp_path, temperature=0.25, threshold=0.93))
    image = np.asarray(open_image(sign_photos(1, [2])[0]).convert("RGB"))
    with torch.no_grad():
        logits = rec.model(rec.metadata["transform"](image).unsqueeze(0))
    np.testing.assert_allclose(rec.predict(image).probs, torch.softmax(logits / 0.25, 1)[0].numpy(), rtol=1e-5,
                               atol=1e-6)
    assert rec.threshold() == 0.93 and rec.threshold(0.5) == 0.5
    assert Recognizer.from_path(tiny_checkpoint).threshold() == 0.6  # saved before calibration: the old rule


def test_frames_the_ood_check_rejects_are_never_claimed(tiny_checkpoint, tmp_path):
    rec = Recognizer.from_path(_calibrated_copy(tiny_checkpoint, tmp_path, threshold=0.0, ood_score="max_logit",
                                                ood_threshold=1e9))
    blank = np.full((60, 80, 3), 128, np.uint8)
    pred = rec.predict(blank)
    assert not pred.known and pred.ood_score is not None and not pred.evidence.any()
    video = tmp_path / "blank.mp4"
    write_video([blank] * 4, video, fps=5)
    recognize(rec, open_source(video), RecognizeSettings(out=tmp_path / "out", headless=True))
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["smoothed_label"] is None and r["known"] is False for r in rows)


def test_stills_are_judged_one_by_one_unless_asked(tiny_checkpoint, photo_folder, tmp_path):
    rec = Recognizer.from_path(tiny_checkpoint)
    for smooth in (False, True):
        out = tmp_path / f"smooth-{smooth}"
        recognize(rec, open_source(photo_folder), RecognizeSettings(out=out, headless=True, roi_fraction=1.0,
                                                                      window=3, threshold=0.0, smooth_stills=smooth))
        rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        alone = [r["smoothed_confidence"] == pytest.approx(r["confidence"], abs=1e-5) for r in rows]
        assert all(alone) if not smooth else not all(alone[1:])
