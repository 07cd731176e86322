"""akd_edge.core.files: atomic writes, safe names, ownership marks, folder locks, orphan clean-up."""

from __future__ import annotations

import multiprocessing
import os
import stat

import pytest

from akd_edge.core import files
from akd_edge.core.errors import UsageError


@pytest.mark.parametrize("name", ["", "..", ".", "../x", "/etc", "a/b", ".hidden", "a\nb", "x" * 101, 3, None])
def test_check_name_rejects_unsafe_names(name):
    with pytest.raises(UsageError, match="run.name"):
        files.check_name(name, "run.name")


@pytest.mark.parametrize("name", ["fmnist-quickstart", "a", "run_1.2", "x" * 100, "cnn+akd=0.9"])
def test_check_name_accepts_plain_names(name):
    assert files.check_name(name, "run.name") == name


def test_write_atomic_gives_usual_mode_and_leaves_no_temp(tmp_path):
    path = files.write_text_atomic(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == files.file_mode()
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_write_atomic_failure_keeps_old_file_and_no_temp(tmp_path):
    path = files.write_text_atomic(tmp_path / "a.txt", "old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.write_atomic(path, boom)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_json_nan_becomes_null(tmp_path):
    path = files.write_json_atomic(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": (1, 2)})
    assert files.read_json_object(path, "report") == {"a": None, "b": [None, 1.5], "c": [1, 2]}


def test_read_json_object_refuses_non_objects(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(UsageError, match="expected an object"):
        files.read_json_object(tmp_path / "list.json", "report.json")
    with pytest.raises(UsageError, match="cannot read"):
        files.read_json_object(tmp_path / "bad.json", "report.json")


def test_mark_and_marked_kind(tmp_path):
    assert files.marked_kind(tmp_path) is None
    files.mark(tmp_path, "export", source="x")
    assert files.marked_kind(tmp_path) == "export"
    (tmp_path / files.MARK).write_text("[]")
    assert files.marked_kind(tmp_path) is None


def test_ensure_writable_dir_refuses_a_file_and_a_read_only_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        files.ensure_writable_dir(tmp_path / "f", "--out")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("running as a user that can write anywhere")
        with pytest.raises(UsageError, match="cannot write"):
            files.ensure_writable_dir(ro / "sub", "--out")
    finally:
        ro.chmod(0o700)


def test_remove_orphans_only_touches_akd_edge_temp_files(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_text("x")
    (tmp_path / ".other.abc.tmp").write_text("x")
    (tmp_path / "user.tmp").write_text("keep")
    (tmp_path / "last.pt").write_text("keep")
    removed = files.remove_orphans(tmp_path, names=("last.pt",))
    assert [p.name for p in removed] == [".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmp", "last.pt", "user.tmp"]


def _hold_lock(folder, ready, release):
    with files.FolderLock(folder, "run directory"):
        ready.set()
        release.wait(10)


def test_folder_lock_excludes_a_second_process_and_is_released(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(files.FolderInUse, match=f"pid {proc.pid}"):
            files.FolderLock(tmp_path, "run directory").acquire()
    finally:
        release.set()
        proc.join(10)
    with files.FolderLock(tmp_path):
        assert (tmp_path / files.LOCK).is_file()
    assert not (tmp_path / files.LOCK).exists()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    proc.start()
    assert ready.wait(10)
    proc.kill()
    proc.join(10)
    assert (tmp_path / files.LOCK).is_file()  # left behind by the dead process
    with files.FolderLock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / files.LOCK).read_text()
