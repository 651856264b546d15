"""``sabr export --format web`` and ``sabr serve`` (:mod:`sabr.export.web`, :mod:`sabr.serve`), and the page.

The page's modules are checked against the Python apps in node (preprocessing bit for bit, the elevator's
events, the smoothing), and the page itself in headless Chromium driven by Selenium: the model's outputs
against PyTorch's, the camera message, and a fake camera playing the run's test digits 3 then 7 (the
recogniser's per-frame top-1 against Python's, and the elevator's stops). The browser tests need Debian's
``chromium`` and ``chromium-driver``, the ``selenium`` package and ``npm`` (for onnxruntime-web); they skip,
saying why, without them (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sabr.cli import main
from sabr.export.web import ORT_FILES, PAGE_FILES, decision_rule, export_web
from sabr.manifest import MANIFEST

SITE_SOURCE = Path(__file__).resolve().parents[1] / "src" / "sabr" / "export" / "site"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1300,720"]
CLIP_W, CLIP_H, CLIP_SCALE = 256, 192, 18  # the default ROI (75% of 192 = 144 px = 8 x 18) at (56, 24)
INDEX_BITS = 12  # each frame's index, as white 6x8 blocks in the top-left corner, above the ROI
READ_INDEX = f"""window.sabr.frameIndex = (im) => {{
  let v = 0;
  for (let b = 0; b < {INDEX_BITS}; b++) if (im.data[4 * (6 * im.width + 5 + 8 * b)] > 127) v |= 1 << b;
  return v;
}};"""


# --------------------------------------------------------------------------- without a browser
def test_decision_rule_reads_the_calibration_or_the_apps_defaults():
    assert decision_rule({}) == {"temperature": 1.0, "threshold": 0.6, "ood": {"score": None, "threshold": None}}
    cal = {"temperature": 1.7, "threshold": 0.8, "ood": {"score": "energy", "threshold": -3.5}}
    assert decision_rule({"calibration": cal}) == cal


def test_export_refuses_a_folder_that_is_not_a_sabr_site(tmp_path, capsys):
    site = tmp_path / "photos"
    site.mkdir()
    (site / "holiday.jpg").write_bytes(b"not mine")
    assert main(["export", "--run", str(tmp_path / "any"), "--format", "web", "--out", str(site)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a sabr site folder" in err and str(site) in err and len(err.splitlines()) == 1
    assert [p.name for p in site.iterdir()] == ["holiday.jpg"]  # untouched
    (site / MANIFEST).write_text(json.dumps({"format": 1, "kind": "run", "entries": []}))
    assert main(["export", "--run", str(tmp_path / "any"), "--format", "web", "--out", str(site)]) == 2
    assert "holds a sabr run, not a site" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "not a site written by sabr" in capsys.readouterr().err


def test_serve_gives_modules_and_wasm_their_mime_types(tmp_path):
    import urllib.request

    from sabr.serve import site_server

    site = tmp_path / "site"
    (site / "ort").mkdir(parents=True)
    files = {"index.html": "text/html", "app.js": "text/javascript", "ort/ort.webgpu.min.mjs": "text/javascript",
             "ort/x.wasm": "application/wasm", "app.json": "application/json"}
    for name in files:
        (site / name).write_bytes(b"x")
    (site / MANIFEST).write_text(json.dumps({"format": 1, "kind": "site", "entries": list(files)}))
    server = site_server(site, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name, mime in files.items():
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy for this machine
            with direct.open(f"http://127.0.0.1:{server.server_address[1]}/{name}", timeout=10) as r:
                assert r.headers.get_content_type() == mime, name
                assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    finally:
        server.shutdown()
        server.server_close()
    assert server.server_address[0] == "127.0.0.1"


def _node(script: Path, cases: dict, tmp_path: Path) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs): the page's modules cannot run outside a browser")
    (tmp_path / "in.json").write_text(json.dumps(cases))
    subprocess.run([node, str(script), str(tmp_path / "in.json"), str(tmp_path / "out.json")], check=True,
                   timeout=60)
    return json.loads((tmp_path / "out.json").read_text())


NODE_CHECK = """
import { readFileSync, writeFileSync } from "fs";
import { preprocess, centeredRoi } from "SITE/preprocess.js";
import { Elevator } from "SITE/elevator.js";
import { TemporalSmoother, StableGesture, judge, softmax } from "SITE/decision.js";
const cases = JSON.parse(readFileSync(process.argv[2]));
const pre = cases.images.map((c) => Array.from(preprocess(Uint8Array.from(c.rgba), c.width, c.roi, c.pre)));
const rois = cases.rois.map(([w, h, f]) => centeredRoi(w, h, f));
const cars = cases.cars.map((ops) => {
  const car = new Elevator(10, 1.0, 2.0);
  for (const [op, v] of ops) op === "request" ? car.request(v) : car.step(v);
  return car.log;
});
const smooth = cases.smooth.map(({ logits, window, threshold, frames, min_confidence }) => {
  const s = new TemporalSmoother(window, threshold), g = new StableGesture(frames, min_confidence);
  return logits.map((l) => { const r = s.update(softmax(l)); return [r.label, r.confidence, g.update(r)]; });
});
const judged = cases.judge.map(({ logits, decision }) => logits.map((l) => {
  const j = judge(l, decision);
  return [Array.from(j.probs), j.known, Array.from(j.evidence)];
}));
writeFileSync(process.argv[3], JSON.stringify({ pre, rois, cars, smooth, judged }));
"""


def test_page_modules_match_the_python_apps(tmp_path):
    """Preprocessing bit for bit (Pillow's resize and grayscale), the ROI, the elevator, the smoothing."""
    from sabr.apps import Elevator, Roi, StableGesture, TemporalSmoother
    from sabr.calibration import Calibration
    from sabr.data import Preprocess

    rng = np.random.default_rng(0)
    images, expected = [], []
    for w, h, size, ch in [(256, 192, 8, 1), (64, 48, 16, 3), (33, 77, 8, 1), (300, 200, 28, 1), (5, 9, 32, 3)]:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        roi = Roi.centered(w, h, 0.75)
        pre = Preprocess.from_dict({"image_size": size, "channels": ch, "mean": rng.random(ch).tolist(),
                                    "std": (0.2 + rng.random(ch)).tolist()})
        expected.append(pre(roi.crop(rgb)).numpy().ravel())
        rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], 2)
        images.append({"rgba": rgba.ravel().tolist(), "width": w, "roi": vars(roi), "pre": pre.to_dict()})
    rois = [(w, h, f) for w in (190, 333, 640) for h in (142, 190, 480) for f in (0.75, 0.5, 0.33, 1.0)]
    cars = [[("request", int(f)) if rng.random() < 0.4 else ("step", float(rng.choice([0.1, 0.37, 1.5])))
             for f in rng.integers(0, 10, 60)] for _ in range(10)]
    smooth = [{"logits": (3 * rng.standard_normal((80, 10)) + 4 * np.eye(10)[rng.integers(0, 3, 80)]).tolist(),
               "window": int(rng.integers(1, 6)), "threshold": 0.5, "frames": 4, "min_confidence": 0.6}
              for _ in range(5)]
    raw = 4 * rng.standard_normal((40, 10))
    decisions = [{"temperature": 1.0, "threshold": 0.6, "ood": {"score": None, "threshold": None}},
                 {"temperature": 2.5, "threshold": 0.8, "ood": {"score": "max_logit", "threshold": 6.0}},
                 {"temperature": 0.7, "threshold": 0.5, "ood": {"score": "energy", "threshold": 7.0}}]
    judge = [{"logits": raw.tolist(), "decision": d} for d in decisions]
    script = tmp_path / "check.mjs"
    script.write_text(NODE_CHECK.replace("SITE", SITE_SOURCE.as_uri()))
    got = _node(script, {"images": images, "rois": rois, "cars": cars, "smooth": smooth, "judge": judge}, tmp_path)

    for want, have in zip(expected, got["pre"]):
        assert np.array_equal(want, np.asarray(have, dtype=np.float32))  # bit for bit
    assert got["rois"] == [vars(Roi.centered(*r)) for r in rois]
    for ops, log in zip(cars, got["cars"]):
        car = Elevator(10, 1.0, 2.0)
        for op, v in ops:
            car.request(v) if op == "request" else car.step(v)
        assert log == [e.to_dict() for e in car.log]
    for case, rows in zip(smooth, got["smooth"]):
        s = TemporalSmoother(case["window"], case["threshold"])
        g = StableGesture(case["frames"], case["min_confidence"])
        for logits, (label, conf, fired) in zip(case["logits"], rows):
            r = s.update(torch.softmax(torch.tensor(logits), 0).numpy())
            assert (label, fired) == (r.label, g.update(r)) and conf == pytest.approx(r.confidence, abs=1e-6)
    z = torch.tensor(raw, dtype=torch.float32)
    for d, rows in zip(decisions, got["judged"]):  # the calibration: softmax(z / T), the OOD check of raw z
        cal = Calibration.from_dict(d)
        probs, known = cal.probabilities(z).numpy(), cal.known(z).numpy()
        assert 0 < known.sum() < len(z) or cal.ood_score is None
        assert np.abs(np.array([r[0] for r in rows]) - probs).max() < 1e-6
        assert [r[1] for r in rows] == known.tolist()
        assert all(sum(r[2]) == 0 for r, k in zip(rows, known) if not k)


# --------------------------------------------------------------------------- a real run, its site, a browser
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A short real `sabr run` on the digits (10 + 3 epochs): good enough to read the test digits."""
    out = tmp_path_factory.mktemp("web") / "run"
    assert main(["run", "--out", str(out), "--epochs-base", "10", "--epochs-sabr", "3", "--threads", "1",
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def site(digits_run) -> Path:
    out = digits_run.parent / "site"
    result = export_web(digits_run, out)
    if result["runtime"] is None:
        pytest.skip(f"npm could not fetch onnxruntime-web ({result['hint']})")
    return out


@pytest.fixture(scope="module")
def url(site):
    from sabr.serve import site_server

    server = site_server(site, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _browser(tmp_path: Path, *flags: str):
    """Headless Debian Chromium through its chromedriver (skip, saying why, when either is missing)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _wait(driver, script: str, seconds: float = 60):
    """Poll ``script`` until it returns something truthy; fail after ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    state = driver.execute_script("return [window.sabr && window.sabr.error, document.getElementById('notice')"
                                  ".textContent]")
    pytest.fail(f"the page did not get there in {seconds} s ({script!r}); its error and notice: {state}")


@pytest.mark.slow
def test_export_web_writes_a_self_contained_sabr_site(site, digits_run, tmp_path):
    from sabr.export import load_model

    manifest = json.loads((site / MANIFEST).read_text())
    assert manifest["format"] == 1 and manifest["kind"] == "site"
    assert set(manifest["entries"]) == {"model.onnx", "model.json", "app.json", "package.json", *PAGE_FILES,
                                        "ort", *(f"ort/{f}" for f in ORT_FILES)}
    assert all((site / e).is_file() for e in manifest["entries"] if e != "ort")
    app = json.loads((site / "app.json").read_text())
    _, meta = load_model(digits_run)
    assert app["classes"] == meta["classes"] and app["preprocess"] == meta["preprocess"]
    assert app["decision"] == decision_rule(meta) and app["runtime"]["path"] == "ort/"
    assert json.loads((site / "package.json").read_text())["dependencies"] == {"onnxruntime-web": "1.31.1"}
    text = "".join((site / f).read_text() for f in PAGE_FILES)
    assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text  # no CDN
    # the shrunk model where it is smaller, with the pruned model's outputs
    onnx, _ = load_model(site / "model.onnx")
    pruned, _ = load_model(digits_run)
    assert app["model_info"]["shrunk"] == (app["model_info"]["params"] < sum(p.numel() for p in pruned.parameters()))
    x = torch.randn(4, 1, 8, 8)
    assert (onnx(x) - pruned(x)).abs().max() < 1e-4
    # exporting again into the site replaces it and removes what the old export listed and this one did not
    stale = site / "old.js"
    stale.write_text("stale")
    (site / MANIFEST).write_text(json.dumps({**manifest, "entries": [*manifest["entries"], "old.js"]}))
    assert main(["export", "--run", str(digits_run), "--format", "web", "--out", str(site), "--quiet"]) == 0
    assert not stale.exists() and json.loads((site / MANIFEST).read_text()) == manifest
    # without npm: the one `npm install` step, and the page looks for the runtime where it puts it
    result = export_web(digits_run, tmp_path / "no-npm", npm=None)
    assert result["runtime"] is None and "npm install" in result["hint"] and not (tmp_path / "no-npm" / "ort").exists()
    no_npm = json.loads((tmp_path / "no-npm" / "app.json").read_text())["runtime"]
    assert no_npm["path"] == "node_modules/onnxruntime-web/dist/" and no_npm["module"] == ORT_FILES[0]


@pytest.mark.slow
def test_a_model_that_does_not_export_to_onnx_gets_one_sentence(digits_run, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::my_op' to ONNX opset version 17 is not supported.\nmore")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    assert main(["export", "--run", str(digits_run), "--format", "web", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be exported to ONNX" in err and "aten::my_op" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_page_model_gives_pytorchs_probabilities(url, digits_run, tmp_path):
    from sabr.apps import Recognizer
    from sabr.experiment import load_experiment

    rec = Recognizer.from_path(digits_run)
    images = load_experiment(digits_run).test.images[:32]
    x = rec.transform.normalize(images)
    with torch.no_grad():
        expected = rec.calibration.probabilities(rec.model(x)).numpy()
    driver = _browser(tmp_path)
    try:
        driver.get(url)
        backend = _wait(driver, "return window.sabr && window.sabr.ready && window.sabr.backend")
        got = driver.execute_async_script("const done = arguments[arguments.length - 1];"
                                          "window.sabr.classify(arguments[0], arguments[1]).then(done);",
                                          x.numpy().ravel().tolist(), len(x))
        rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        rgba = np.concatenate([rgb, np.full((48, 64, 1), 255, np.uint8)], 2)
        roi = {"x": 8, "y": 4, "width": 40, "height": 40}
        pre = driver.execute_script("return window.sabr.preprocess(arguments[0], 64, arguments[1])",
                                    rgba.ravel().tolist(), roi)
    finally:
        driver.quit()
    probs = np.asarray(got["probs"])
    assert backend in ("wasm", "webgpu")
    assert np.array_equal(probs.argmax(1), expected.argmax(1))
    assert np.abs(probs - expected).max() <= 1e-4
    want = rec.transform(rgb[4:44, 8:48]).numpy().ravel()
    assert np.array_equal(np.asarray(pre, dtype=np.float32), want)


@pytest.mark.slow
def test_the_page_says_when_it_has_no_camera(url, tmp_path):
    driver = _browser(tmp_path)  # headless, no fake device: no camera
    try:
        driver.get(url)
        _wait(driver, "return window.sabr && window.sabr.camera !== 'off' && window.sabr.camera !== 'on'")
        text = driver.find_element("id", "notice").text
    finally:
        driver.quit()
    assert "camera" in text and "localhost" in text and "HTTPS" in text


def _clip_frames(digits_run: Path) -> tuple[np.ndarray, list[int]]:
    """Grayscale frames of the run's test digits, every 3, then every 7, each for 3 frames, index in the corner."""
    from sabr.experiment import load_experiment

    test = load_experiment(digits_run).test
    images, labels = test.images[:, 0].numpy(), test.labels.numpy()
    sequence = [(d, c) for c in (3, 7) for d in images[labels == c] for _ in range(3)]
    frames = np.zeros((len(sequence), CLIP_H, CLIP_W), np.uint8)
    side = 8 * CLIP_SCALE
    x0, y0 = (CLIP_W - side) // 2, (CLIP_H - side) // 2
    for i, (digit, _) in enumerate(sequence):
        frames[i, y0:y0 + side, x0:x0 + side] = np.kron(digit, np.ones((CLIP_SCALE, CLIP_SCALE), np.uint8))
        for b in range(INDEX_BITS):
            if i >> b & 1:
                frames[i, 2:10, 2 + 8 * b:8 + 8 * b] = 255
    return frames, [c for _, c in sequence]


def _write_y4m(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """Raw I420 video; gray levels as studio-range luma (16..235), which the browser maps back to 0..255."""
    h, w = frames.shape[1:]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for g in frames:
            luma = np.rint(16 + g.astype(np.float64) * 219 / 255).astype(np.uint8)
            f.write(b"FRAME\n" + luma.tobytes() + bytes([128]) * (w * h // 2))


@pytest.mark.slow
def test_the_page_recognises_a_camera_and_drives_the_elevator(url, site, digits_run, tmp_path):
    from sabr.apps import Recognizer, Roi

    frames, _ = _clip_frames(digits_run)
    _write_y4m(tmp_path / "clip.y4m", frames)
    driver = _browser(tmp_path, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      f"--use-file-for-fake-video-capture={tmp_path / 'clip.y4m'}")
    try:
        driver.get(url)
        _wait(driver, "return window.sabr && window.sabr.ready")
        driver.execute_script(READ_INDEX)
        stops = "return window.sabr.elevator.log.filter(e => e.event === 'arrive').map(e => e.floor)"
        _wait(driver, stops + ".length >= 2", 90)
        arrivals = driver.execute_script(stops)
        page = driver.execute_script("return window.sabr.frames.map(f => [f.index, f.top1, f.latency_ms])")
        backend = driver.execute_script("return window.sabr.backend")
        screenshot = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    rec = Recognizer.from_path(digits_run)
    roi = Roi.centered(CLIP_W, CLIP_H, 0.75)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `sabr recognize` (--threads 1)
    try:
        python = [rec.predict(roi.crop(np.repeat(g[:, :, None], 3, 2))) for g in frames]
    finally:
        torch.set_num_threads(threads)
    seen = {i: top1 for i, top1, _ in page if i is not None and i < len(frames)}
    agree = np.mean([python[i].label == top1 for i, top1 in seen.items()])
    assert len(seen) >= len(frames) // 2, f"the page saw {len(seen)} of the clip's {len(frames)} frames"
    assert agree >= 0.9, f"the page's top-1 agrees with Python's on {100 * agree:.1f}% of {len(seen)} frames"
    assert arrivals[:2] == [3, 7]
    figures = {"backend": backend, "decision": json.loads((site / "app.json").read_text())["decision"],
               "frames": len(frames), "frames_seen": len(seen), "agreement": float(agree),
               "page_latency_ms_median": float(np.median([ms for _, _, ms in page[5:]])),
               "python_latency_ms_median": float(np.median([p.latency_ms for p in python[5:]]))}
    print(json.dumps(figures))
    docs = os.environ.get("SABR_WEB_DOCS")  # e.g. docs/img: keep the screenshot and the figures
    if docs:
        Path(docs, "web.png").write_bytes(screenshot)
        Path(docs, "web.json").write_text(json.dumps(figures, indent=2) + "\n")
