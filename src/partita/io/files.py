"""Files that appear whole or not at all: write a temporary file beside the target, then rename it.

::

    from partita.io.files import atomic_path, atomic_write
    atomic_write(path, b"bytes or text")
    with atomic_path(path) as tmp:       # for writers that take a path (faiss, pyarrow, numpy, wave)
        write_something(tmp)

The temporary file sits in the target's folder (one file system, so the rename is atomic) and is
removed when the writing fails; the target is then left as it was. Only the standard library is
used here, so every layer of partita can import it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path to write to; renamed to ``path`` when the block ends without an error.

    ``suffix``: the temporary file's suffix (default: ``path``'s own, for writers that pick the
    format by it). The target's folder is made when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix if suffix is None else suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` whole or not at all; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
