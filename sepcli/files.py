"""Writing files so that nothing half-written is ever left where a reader looks.

Every file sepcli keeps (stream and chat checkpoints, calibration records, document caches) and
the GGUF conversion folder are written beside their final path and renamed into place: a crash or
a full disk mid-write leaves the old file (or nothing), never a truncated one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from sepcli.errors import SepcliError


def temp_beside(path: Path, suffix: str, error: type[SepcliError], what: str) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder (created if missing): (fd, its path).
    An OSError becomes ``error("cannot write {what} {path}: ...")``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise error(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def probe_writable(path: Path, error: type[SepcliError], what: str) -> None:
    """Check now that ``path`` can be written (its folder is created if missing), so a long run
    does not find out at its end. Leaves no file behind."""
    fd, tmp = temp_beside(path, ".probe", error, what)
    os.close(fd)
    os.unlink(tmp)


def write_atomic(
    path: Path, write: Callable[[BinaryIO], None], error: type[SepcliError], what: str
) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync, then rename it over ``path``.
    On any failure the temporary file is removed; an OSError becomes ``error``."""
    fd, tmp = temp_beside(path, ".tmp", error, what)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise error(f"cannot write {what} {path}: {exc.strerror or exc}") from None
        raise


@contextmanager
def folder_atomic(final: Path) -> Iterator[Path]:
    """``with folder_atomic(final) as tmp:`` fill ``tmp``; on success it is renamed to ``final``.
    A concurrent writer that got there first wins (its folder is kept, ours dropped)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
