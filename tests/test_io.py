"""Atomic writes: the whole file or the old one, never half; ordinary permissions."""
import os
import stat

import pytest

from archspec.errors import UserError
from archspec.io import write_bytes_atomic, write_text_atomic


def test_new_file_gets_the_umask_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "hello")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_existing_file_keeps_its_mode_and_no_temp_files_remain(tmp_path):
    path = tmp_path / "b.bin"
    path.write_bytes(b"old")
    path.chmod(0o600)
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text("mine")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(UserError, match="cannot write .*c.txt: disk full"):  # one line, not a traceback
        write_text_atomic(path, "theirs")
    assert path.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_bad_targets_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        write_text_atomic(tmp_path, "x")
    with pytest.raises(UserError, match="does not exist"):
        write_text_atomic(tmp_path / "missing" / "x.txt", "x")
