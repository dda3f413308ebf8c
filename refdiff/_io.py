"""Atomic file writes and safe reads: a file is either the old one, the new one, or absent.

Every writer in refdiff (and refdiff.export) goes through :func:`atomic_write`: the data
goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows).  An interrupted write leaves at most
a stray ``.*.tmp`` file, never a half-written target.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import DTypeError, FileFormatError

__all__ = ["atomic_write", "write_bytes", "write_text", "write_json", "save_npz", "load_npz"]


_UMASK = os.umask(0)  # read the process umask once (os.umask can only read by setting)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[io.BufferedWriter]:
    """Context manager yielding a binary file; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the file the usual umask mode
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``numpy.savez`` through :func:`atomic_write`; refuses object arrays (no pickle)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype.hasobject:
            raise DTypeError(k, "object arrays cannot be saved without pickle")
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read with ``allow_pickle=False``.

    Raises :class:`~refdiff.errors.FileFormatError` for a missing, truncated, corrupted or
    pickled file.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileFormatError(path, "no such file") from None
    except ValueError as e:  # pickled object arrays land here
        raise FileFormatError(path, f"refused: {e}") from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, …
        raise FileFormatError(path, f"not a readable .npz file ({type(e).__name__}: {e})") from None
