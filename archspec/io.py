"""Writing files so that nothing a user made is lost half-written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from archspec.errors import UserError


def write_text_atomic(path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename over it in one step."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_bytes_atomic(path, data: bytes) -> None:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory (hint: give a file name)")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UserError(f"directory {directory} does not exist (hint: create it first)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:  # a folder that exists but holds no files of ours (read-only, /proc)
        raise UserError(f"cannot write {path}: {err.strerror or err} (hint: choose a folder you can write to)") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; keep the file's mode, or the umask's
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path}: {err.strerror or err} (hint: check the space and permissions there)") from None
        raise


def make_dir(path) -> Path:
    """``mkdir -p`` with one line, not a traceback, when the folder cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create folder {path}: {err.strerror or err} (hint: choose a folder you can write to)") from None
    return path
