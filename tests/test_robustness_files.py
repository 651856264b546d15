"""Issue 32, the files side: sabr deletes only what it wrote, never writes an output over what it reads, never
follows a symbolic link on write, and leaves no half pair or stray temporary file. Real runs and files; every
user file is hashed before and after; kills are real signals in a subprocess."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sabr.checkpoint as checkpoint
from sabr.checkpoint import atomic_write, load_checkpoint
from sabr.cli import main
from sabr.errors import CheckpointError
from sabr.rundir import RunDir

from .conftest import TINY
from .test_robustness import _cli, _one_sentence

SRC = str(Path(__file__).resolve().parents[1] / "src")
MANIFEST = ".sabr-manifest.json"


def tree(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: its SHA-256 (links: their target), never following a link."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            p = Path(folder, name)
            key = p.relative_to(root).as_posix()
            out[key] = f"-> {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _copy(runs, name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(runs[name], folder, symlinks=True)
    return folder


def _user_folder(root: Path) -> Path:
    root.mkdir()
    (root / "thesis.txt").write_text("years of work")
    (root / "sub").mkdir()
    (root / "sub" / "data.csv").write_text("1,2\n")
    return root


def _python(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# --------------------------------------------------------------------------- sabr deletes only what it wrote
@pytest.mark.parametrize("flags", [["--overwrite"], []])
def test_out_on_a_folder_of_user_files_is_refused_and_nothing_changes(flags, tmp_path, capsys):
    d = _user_folder(tmp_path / "d")
    before = tree(tmp_path)
    code, err = _cli(["run", *TINY, "--out", str(d), *flags], capsys)
    _one_sentence(code, err, "is not empty and is not a sabr run folder")
    assert tree(tmp_path) == before and not (d / MANIFEST).exists()


def test_out_on_a_web_site_folder_is_refused(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html/>")
    (site / MANIFEST).write_text(json.dumps({"format": 1, "kind": "site", "entries": ["index.html"]}))
    before = tree(tmp_path)
    code, err = _cli(["run", *TINY, "--out", str(site), "--overwrite"], capsys)
    _one_sentence(code, err, "holds a sabr site, not a run")
    assert tree(tmp_path) == before


def test_overwrite_of_a_run_keeps_the_users_own_files(runs, tmp_path):
    folder = _copy(runs, "done", tmp_path)
    (folder / "notes.txt").write_text("my notes on this run")
    (folder / "mine").mkdir()
    (folder / "mine" / "plot.svg").write_text("<svg/>")
    kept = {k: v for k, v in tree(folder).items() if k in ("notes.txt", "mine/plot.svg")}
    run = RunDir(folder).open(overwrite=True)
    try:
        assert sorted(p.name for p in folder.iterdir()) == [RunDir.LOCK, MANIFEST, "mine", "notes.txt"]
        assert {k: v for k, v in tree(folder).items() if k in kept} == kept
    finally:
        run.unlock()


def test_a_run_folder_of_an_older_sabr_gives_up_only_its_known_files(runs, tmp_path):
    folder = _copy(runs, "done", tmp_path)
    (folder / MANIFEST).unlink()  # written by a sabr without manifests
    (folder / "export").mkdir()
    (folder / "export" / "pruned-sparse.safetensors").write_bytes(b"old export")
    (folder / "export" / "by-hand.onnx").write_bytes(b"the user's")
    (folder / "summary.json.tmp").write_bytes(b"left by an old kill")
    (folder / "thesis.txt").write_text("the user's")
    run = RunDir(folder).open(overwrite=True)
    try:
        left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
        assert left == [RunDir.LOCK, MANIFEST, "export", "export/by-hand.onnx", "thesis.txt"]
    finally:
        run.unlock()


# --------------------------------------------------------------------------- outputs never land on inputs
@pytest.mark.parametrize("out, fmt", [("base.safetensors", "sparse"), ("base", "shrunk"), ("sabr_state.json", "sparse"),
                                      ("summary.onnx", "onnx")])
def test_export_onto_the_runs_own_files_is_refused(out, fmt, runs, tmp_path, capsys):
    folder = _copy(runs, "done", tmp_path)
    before = tree(tmp_path)
    code, err = _cli(["export", "--run", str(folder), "--format", fmt, "--out", str(folder / out)], capsys)
    _one_sentence(code, err, "would replace", "which the command reads")
    assert tree(tmp_path) == before


def test_export_of_a_checkpoint_onto_itself_is_refused(runs, tmp_path, capsys):
    folder = _copy(runs, "done", tmp_path)
    (folder / "pruned.safetensors").rename(tmp_path / "m.safetensors")
    (folder / "pruned.json").rename(tmp_path / "m.json")
    before = tree(tmp_path)
    code, err = _cli(["export", "--run", str(tmp_path / "m.safetensors"), "--format", "sparse",
                      "--out", str(tmp_path / "m.json")], capsys)
    _one_sentence(code, err, "would replace")
    assert tree(tmp_path) == before


def test_export_into_the_run_takes_its_lock_and_is_listed_in_its_manifest(runs, tmp_path, capsys):
    folder = _copy(runs, "done", tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n"),
        str(folder / RunDir.LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _cli(["export", "--run", str(folder), "--format", "sparse"], capsys)
        _one_sentence(code, err, "in use by another sabr process")
        assert not (folder / "export").exists()
    finally:
        holder.kill()
        holder.wait()
    assert _cli(["export", "--run", str(folder), "--format", "sparse"], capsys)[0] == 0
    entries = json.loads((folder / MANIFEST).read_text())["entries"]
    assert {"export", "export/pruned-sparse.safetensors", "export/pruned-sparse.json"} <= set(entries)


def test_bench_json_onto_the_runs_summary_is_refused_before_measuring(runs, tmp_path, capsys):
    folder = _copy(runs, "done", tmp_path)
    before = tree(tmp_path)
    code, err = _cli(["bench", "--run", str(folder), "--json", str(folder / "summary.json"), "--runs", "1",
                      "--warmup", "0", "--batch-sizes", "1", "--no-onnx"], capsys)
    _one_sentence(code, err, "--json", "would replace")
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- no symlink is followed on write
def test_atomic_write_never_follows_a_planted_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    (outside / "other").write_bytes(b"precious too")
    d = tmp_path / "d"
    d.mkdir()
    (d / "summary.json.tmp").symlink_to(outside / "victim")
    (d / "summary.json").symlink_to(outside / "other")
    before = tree(outside)
    atomic_write({d / "summary.json": b"{}"})
    assert tree(outside) == before
    assert not (d / "summary.json").is_symlink() and (d / "summary.json").read_bytes() == b"{}"


@pytest.mark.slow
def test_resume_with_planted_temporary_links_writes_nothing_outside(runs, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("state", "summary"):
        (outside / name).write_bytes(b"the user's " + name.encode())
    folder = _copy(runs, "killed", tmp_path)
    (folder / "resume.safetensors.tmp").symlink_to(outside / "state")
    (folder / "summary.json.tmp").symlink_to(outside / "summary")
    before = tree(outside)
    assert _cli(["run", "--quiet", "--resume", str(folder)], capsys)[0] == 0
    assert tree(outside) == before
    assert (folder / "summary.json").is_file() and not (folder / "summary.json").is_symlink()


def test_a_lock_file_that_is_a_link_is_refused(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / RunDir.LOCK).symlink_to(outside / "created")
    code, err = _cli(["run", *TINY, "--out", str(run)], capsys)
    _one_sentence(code, err, ".lock is a symbolic link")
    assert list(outside.iterdir()) == []


def test_a_symlinked_export_folder_is_refused(runs, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("the user's")
    folder = _copy(runs, "done", tmp_path)
    (folder / "export").symlink_to(outside)
    before = tree(outside)
    code, err = _cli(["export", "--run", str(folder), "--format", "sparse"], capsys)
    _one_sentence(code, err, "symbolic link")
    assert tree(outside) == before


def test_recognize_out_through_a_link_out_of_the_run_is_refused(runs, tmp_path, capsys, monkeypatch):
    from .test_robustness_apps import _png

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # recognize's --threads 1 would outlive the test

    outside = tmp_path / "outside"
    outside.mkdir()
    folder = _copy(runs, "done", tmp_path)
    (folder / "rec").symlink_to(outside)
    (tmp_path / "frames").mkdir()
    _png(tmp_path / "frames" / "0.png", 16)
    code, err = _cli(["recognize", "--quiet", "--model", str(folder), "--source", str(tmp_path / "frames"),
                      "--headless", "--out", str(folder / "rec")], capsys)
    _one_sentence(code, err, "symbolic link")
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------- faults: one sentence, no stray file
@pytest.mark.slow
def test_recognize_headless_on_a_full_disk_is_one_sentence(runs, tmp_path):
    from .test_robustness_apps import _png

    (tmp_path / "frames").mkdir()
    for i in range(40):
        _png(tmp_path / "frames" / f"{i:02d}.png", 64, 5 * i)
    code = ("import resource, signal, sys\nfrom sabr.cli import main\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # the disk 'fills' at 3000 bytes per file
            "resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = _python(code, "recognize", "--quiet", "--model", str(runs["done"]), "--source", str(tmp_path / "frames"),
                "--headless", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("error:") == 1, r.stderr
    assert "could not write" in r.stderr


def test_an_unreadable_checkpoint_json_is_one_sentence(runs, monkeypatch, capsys):
    real = Path.read_text

    def read_text(self, *a, **k):
        if self.name == "pruned.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    code, err = _cli(["export", "--run", str(runs["done"]), "--format", "sparse", "--out", "/nonexistent/x"], capsys)
    _one_sentence(code, err, "cannot read", "pruned.json", "Permission denied")


def test_export_storage_errors_do_not_suggest_resuming_a_run(runs, tmp_path, monkeypatch, capsys):
    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_bytes", disk_full)
    code, err = _cli(["export", "--run", str(runs["done"]), "--format", "sparse", "--out",
                      str(tmp_path / "x.safetensors")], capsys)
    _one_sentence(code, err, "disk is full", "run the command again")
    assert "--resume" not in err and not list(tmp_path.iterdir())


def test_storage_errors_in_an_unfinished_run_suggest_resuming_it(tmp_path):
    (tmp_path / "config.yaml").write_text("model: x\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "_write_bytes", lambda p, d: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        with pytest.raises(checkpoint.StorageError, match=f"sabr run --resume {tmp_path}"):
            atomic_write({tmp_path / "base.json": b"{}"})


@pytest.mark.slow
def test_sigkill_during_onnx_export_leaves_no_half_pair(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    code = ("import os, signal, sys\nimport onnxruntime\nfrom sabr.cli import main\n"
            "onnxruntime.InferenceSession = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = _python(code, "export", "--quiet", "--run", str(runs["done"]), "--format", "onnx", "--out",
                str(tmp_path / "m.onnx"))
    assert r.returncode == -signal.SIGKILL
    assert list(tmp_path.iterdir()) == []  # no .onnx without its .json (the check runs before anything is written)


def test_an_onnx_export_without_its_json_names_the_real_problem(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"half a pair")
    from sabr.export import load_model

    with pytest.raises(CheckpointError, match=r"m.json is missing.*\.onnx export.*export again"):
        load_model(tmp_path / "m.onnx")


@pytest.mark.slow
def test_sigkill_during_the_plots_leaves_no_stray_temporary_file_after_resume(runs, tmp_path, capsys):
    folder = _copy(runs, "killed", tmp_path)
    summary = json.loads((runs["done"] / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    code = ("import json, os, signal, sys\nimport sabr.checkpoint as c\nfrom sabr import report\n"
            "real = c._write_bytes\n"
            "def write(path, data):\n"
            "    if 'lambdas.csv' in os.path.basename(path):\n"
            "        open(path, 'wb').write(data[:10])\n        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(path, data)\n"
            "c._write_bytes = write\n"
            "from sabr.rundir import RunDir\nRunDir(sys.argv[1]).open(resume=True)\n"  # as in `sabr run --resume`
            "report.write_run_report(sys.argv[1], json.load(open(sys.argv[2])), [], [], {'w': [1.0]})\n")
    r = _python(code, str(folder), str(tmp_path / "summary.json"))
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # what the kill left is hidden ...
    assert left and all(n.startswith(".lambdas.csv.") for n in left), left
    assert _cli(["run", "--quiet", "--resume", str(folder)], capsys)[0] == 0
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # ... is gone after --resume


@pytest.mark.slow
def test_sigterm_is_one_sentence_and_exit_code_143(tmp_path):
    code = ("import os, signal, sys\nimport sabr.pipeline as p\n"
            "def prepare(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
            "p.prepare = prepare\nfrom sabr.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    r = _python(code, "run", *TINY, "--out", str(tmp_path / "o"))
    assert r.returncode == 143 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("error:") == 0 and "terminated (SIGTERM)" in r.stderr and "--resume" in r.stderr


def test_a_newline_in_a_skipped_file_name_stays_on_one_line(tmp_path):
    run = RunDir(tmp_path)
    run.write_skipped(["digit_1/bad\nname.png", "digit_2/back\\slash.png", "digit_3/ok.png"])
    assert run.skipped_images.read_text().splitlines() == [
        "digit_1/bad\\nname.png", "digit_2/back\\\\slash.png", "digit_3/ok.png"]


def test_loading_a_checkpoint_is_unaffected_by_a_stray_temporary_file(runs, tmp_path):
    folder = _copy(runs, "done", tmp_path)
    (folder / ".pruned.safetensors.0badc0de.tmp").write_bytes(b"half")
    assert load_checkpoint(folder / "pruned.safetensors")[0] is not None
