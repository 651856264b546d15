"""Issue 14, the run side: every value validated before any work, the run folder locked, complete or
visibly unfinished, and never resumed from a config it cannot trust. Real files; OS faults simulated at
the OS-call or storage-function level (everything runs as root, so chmod proves nothing)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sabr.checkpoint as checkpoint
from sabr import report
from sabr.cli import main
from sabr.config import RunConfig, load_yaml
from sabr.errors import ConfigError, StorageError
from sabr.rundir import RunDir

from .conftest import TINY


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    return code, err


def _one_sentence(code: int, err: str, *words: str) -> None:
    assert code == 2 and err.count("error:") == 1, err
    assert all(w in err for w in words), err


# --------------------------------------------------------------------------- values, before any work
@pytest.mark.parametrize("flags, words", [
    (["--lr-sabr", "-1"], ["lr_sabr must be > 0"]),
    (["--device", "tpu"], ["device must be"]),
    (["--seed", "-1"], ["seed must be >= 0"]),
    (["--image-size", "100000"], ["image_size must be <= 1024"]),
    (["--teta1", "nan"], ["teta1 must be a finite number"]),
    (["--prune-teta1", "nan"], ["prune_teta1 must be a finite number"]),
    (["--gamma", "inf"], ["gamma must be a finite number"]),
    (["--epsilon", "-1"], ["epsilon must be >= 0"]),
    (["--max-per-class", "-1"], ["max_per_class must be >= 1"]),
    (["--params", "features.0.weight", "no.such.weight"], ["no.such.weight", "not parameters"]),
])
def test_bad_values_are_refused_before_any_work(flags, words, tmp_path, capsys):
    code, err = _cli(["run", *TINY, *flags, "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, *words)
    assert not (tmp_path / "o").exists()  # refused before the folder, the data or phase 1


def test_yaml_values_are_read_like_command_line_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('lr: 1e-3\nepochs_base: "3"\nbatch_size: 32.0\nsweep: 0.5\nparams: features.0.weight\n'
                    'data: 12\nscale_teta1: "no"\n')
    c = RunConfig.from_dict(load_yaml(path))
    assert (c.lr, c.epochs_base, c.batch_size, c.sweep, c.params) == (0.001, 3, 32, [0.5], ["features.0.weight"])
    assert c.data == "12" and c.scale_teta1 is False
    for bad in ("epochs_base: 2.5", "lr: fast", "seed: 4294967296", "sweep: []", "pretrained: maybe"):
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=bad.split(":")[0]):
            RunConfig.from_dict(load_yaml(path))


def test_yaml_number_as_data_and_non_utf8_yaml_are_one_sentence(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: 12\n")
    code, err = _cli(["run", *TINY, "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "data path 12 does not exist")
    cfg.write_bytes("model: compact_cnn\n# r\xe9sum\xe9\n".encode("latin-1"))
    code, err = _cli(["run", *TINY, "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "not UTF-8")


# --------------------------------------------------------------------------- resume it can trust
def test_resume_refuses_a_changed_or_empty_config_and_continues_an_untouched_one(runs, tmp_path, capsys):
    folder = tmp_path / "killed"
    shutil.copytree(runs["killed"], folder)
    config = folder / "config.yaml"
    original = config.read_bytes()
    config.write_text(config.read_text().replace("seed: 0", "seed: 1"))
    code, err = _cli(["run", "--quiet", "--resume", str(folder)], capsys)
    _one_sentence(code, err, "config.yaml was changed after the run began")
    config.write_bytes(b"")  # what a full disk left before config.yaml was written atomically
    code, err = _cli(["run", "--quiet", "--resume", str(folder)], capsys)
    _one_sentence(code, err, "config.yaml is empty")
    assert (folder / "resume.safetensors").is_file()  # nothing was lost on refusal
    config.write_bytes(original)
    assert _cli(["run", "--quiet", "--resume", str(folder)], capsys)[0] == 0
    done = json.loads((runs["done"] / "summary.json").read_text())
    again = json.loads((folder / "summary.json").read_text())
    assert again["pruned"] == done["pruned"] and again["layers"] == done["layers"]


# --------------------------------------------------------------------------- one writer per folder
def test_a_folder_locked_by_another_process_is_refused_until_that_process_dies(runs, tmp_path, capsys):
    folder = tmp_path / "killed"
    shutil.copytree(runs["killed"], folder)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n"),
        str(folder / RunDir.LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _cli(["run", *TINY, "--overwrite", "--out", str(folder)], capsys)
        _one_sentence(code, err, "in use by another sabr process")
        code, err = _cli(["run", "--quiet", "--resume", str(folder)], capsys)
        _one_sentence(code, err, "in use by another sabr process")
        assert (folder / "resume.safetensors").is_file() and (folder / "config.yaml").is_file()
    finally:
        holder.kill()  # SIGKILL: the OS releases its lock
        holder.wait()
    RunDir(folder).lock()
    RunDir(folder).unlock()


def test_overwrite_clears_everything_the_old_run_left(runs, tmp_path):
    folder = tmp_path / "done"
    shutil.copytree(runs["done"], folder)
    with RunDir(folder).writing():  # as `sabr export` writes (listed in the run's manifest)
        checkpoint.atomic_write({folder / "skipped_images.txt": b"old.png\n"})
        checkpoint.make_folder(folder / "export")
        checkpoint.atomic_write({folder / "export" / "pruned-onnx.onnx": b"stale"})
    run = RunDir(folder).open(overwrite=True)
    try:
        assert sorted(p.name for p in folder.iterdir()) == [RunDir.LOCK, RunDir.MANIFEST]
    finally:
        run.unlock()


# --------------------------------------------------------------------------- write failures
def _failing_write(match: str, err: int = errno.ENOSPC):
    real = checkpoint._write_bytes

    def write(path, data):
        if match in Path(path).name:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(err, os.strerror(err))
        real(path, data)
    return write


def test_plots_go_through_the_storage_path_and_summary_json_comes_last(runs, tmp_path, monkeypatch):
    folder = tmp_path / "done"
    shutil.copytree(runs["done"], folder)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").unlink()
    monkeypatch.setattr(checkpoint, "_write_bytes", _failing_write(".png"))
    with pytest.raises(StorageError, match="disk is full"):
        report.write_run_report(folder, summary, [], [], {})
    assert not (folder / "summary.json").exists()  # visibly unfinished
    assert not list(folder.glob("*.tmp"))


def test_read_only_file_system_gives_one_error_not_two(tmp_path, monkeypatch, capsys):
    def unlink(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoint, "_write_bytes", _failing_write("config.yaml", errno.EROFS))
    monkeypatch.setattr(Path, "unlink", unlink)
    code, err = _cli(["run", *TINY, "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "could not write", "config.yaml", "Read-only file system")


def test_read_only_out_is_one_sentence(tmp_path, monkeypatch, capsys):
    def mkdir(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, err = _cli(["run", *TINY, "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "cannot create the folder", "Read-only file system")


def test_config_yaml_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "_write_bytes", _failing_write("config.yaml"))
    code, err = _cli(["run", *TINY, "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "disk is full")
    assert not (tmp_path / "o" / "config.yaml").exists() and not list((tmp_path / "o").glob("*.tmp"))


@pytest.mark.parametrize("flags", [["--teta1", "nan"], ["--teta1", "0.2", "-1"], ["--gamma", "inf"]])
def test_prune_factors_are_checked_before_any_work(flags, runs, capsys):
    assert main(["prune", "--run", str(runs["done"]), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert "must be finite numbers >= 0" in err and "Traceback" not in err
    assert not (runs["done"] / "tradeoff.json").exists()
