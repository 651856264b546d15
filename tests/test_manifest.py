"""The manifest: sabr claims only empty folders or its own, records what it writes first, and deletes only that
(never through a link, never a user's file). Real folders and files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sabr.checkpoint import atomic_write, make_folder
from sabr.errors import SabrError, StorageError
from sabr.manifest import MANIFEST, Manifest

from .test_robustness_files import tree


def test_an_empty_folder_is_claimed_with_the_manifest_written_first(tmp_path):
    m = Manifest.claim(tmp_path / "new", "site")
    assert json.loads((tmp_path / "new" / MANIFEST).read_text()) == {"format": 1, "kind": "site", "entries": []}
    assert Manifest.is_sabr_folder(tmp_path / "new", "site") and not Manifest.is_sabr_folder(tmp_path / "new", "run")
    with m:  # active: sabr's own writes into the folder are listed before they happen
        make_folder(tmp_path / "new" / "js")
        atomic_write({tmp_path / "new" / "js" / "app.js": b"x", tmp_path / "new" / "index.html": b"y"})
    atomic_write({tmp_path / "new" / "later.txt": b"not recorded: the manifest is no longer active"})
    assert Manifest.read(tmp_path / "new").entries == ["js", "js/app.js", "index.html"]


def test_a_folder_of_user_files_or_another_kind_is_refused(tmp_path):
    (tmp_path / "thesis.txt").write_text("years of work")
    before = tree(tmp_path)
    with pytest.raises(SabrError, match="is not empty and is not a sabr site folder"):
        Manifest.claim(tmp_path, "site")
    assert tree(tmp_path) == before
    Manifest.claim(tmp_path / "run", "run")
    with pytest.raises(SabrError, match="holds a sabr run, not a site"):
        Manifest.claim(tmp_path / "run", "site")


def test_remove_deletes_only_listed_entries_and_keeps_user_files(tmp_path):
    site = tmp_path / "site"
    with Manifest.claim(site, "site") as m:
        make_folder(site / "a")
        atomic_write({site / "a" / "x.js": b"1", site / "b.html": b"2", site / "c.css": b"3"})
    (site / "a" / "mine.txt").write_text("the user's")  # inside a folder sabr made
    (site / "notes.md").write_text("the user's")
    m.remove(keep=["c.css"])
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob("*")) == [
        MANIFEST, "a", "a/mine.txt", "c.css", "notes.md"]
    assert Manifest.read(site).entries == ["a", "c.css"]  # the folder stays listed: it still holds a user file


def test_a_crafted_manifest_cannot_reach_outside_or_through_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep")
    site = tmp_path / "site"
    site.mkdir()
    (site / "link").symlink_to(outside)
    (site / "file-link").symlink_to(outside / "victim.txt")
    (site / MANIFEST).write_text(json.dumps({"format": 1, "kind": "site", "entries": [
        "../outside/victim.txt", str(outside / "victim.txt"), "link/victim.txt", "link", "file-link"]}))
    before = tree(outside)
    Manifest.read(site).remove()
    assert tree(outside) == before
    assert not os.path.lexists(site / "link") and not os.path.lexists(site / "file-link")  # links gone, not targets


def test_writes_through_a_link_out_of_an_active_folder_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    site = tmp_path / "site"
    with Manifest.claim(site, "site"):
        (site / "assets").symlink_to(outside)
        with pytest.raises(StorageError, match="leads out of the site folder"):
            make_folder(site / "assets")
        with pytest.raises(StorageError, match="symbolic link"):
            atomic_write({site / "assets" / "x.js": b"1"})
    assert list(outside.iterdir()) == []


def test_a_damaged_manifest_is_one_sentence_and_nothing_is_deleted(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    (tmp_path / "a.txt").write_text("keep")
    with pytest.raises(SabrError, match="is damaged"):
        Manifest.claim(tmp_path, "run")
    assert (tmp_path / "a.txt").read_text() == "keep"


def test_stray_temporary_files_of_listed_entries_are_cleaned(tmp_path):
    with Manifest.claim(tmp_path, "export") as m:
        atomic_write({tmp_path / "m.onnx": b"1"})
    (tmp_path / ".m.onnx.1234abcd.tmp").write_bytes(b"half")  # what a SIGKILL mid-write leaves
    (tmp_path / ".other.1234abcd.tmp").write_bytes(b"not sabr's name")
    m.clean_temps()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.1234abcd.tmp", MANIFEST, "m.onnx"]
