"""Atomic file writes and checksums: a reader never sees a half-written file."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["TMP_SUFFIX", "atomic_write", "atomic_write_bytes", "remove_stale_temps", "sha256_file"]

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write ``path`` through a temp file in the same directory, fsync it, then rename.

    Args:
        path: Final location.
        write: Called with the temp file's path; must write the whole content there.

    Returns:
        The final path. On any error the temp file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates 0600 (and a writer may recreate the file); the final file gets what
        # open() would give under the umask, so a service running as another user can read it.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` for an in-memory payload."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temps(directory: str | os.PathLike, older_than_s: float = 60.0) -> list[Path]:
    """Delete temp files an interrupted :func:`atomic_write` left in ``directory``.

    Only hidden ``.*.tmp`` files older than ``older_than_s`` go, so a write in progress in
    another process is left alone.

    Returns:
        The paths removed.
    """
    removed = []
    now = time.time()
    for tmp in Path(directory).glob(f".*{TMP_SUFFIX}"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any thread
    # writes, and set back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
