"""One way to write a file so that a crash never leaves it half written.

    write_atomically(path, lambda file: file.write(b"..."))
    write_atomically(path, text="...")

The content goes to a temporary file beside ``path``, is flushed to disk, and only then
renamed over ``path``: a reader sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike, write: Callable | None = None, *,
                     text: str | None = None) -> Path:
    """Writes ``text`` (UTF-8), or what ``write(binary_file)`` writes, to ``path``."""
    if (write is None) == (text is None):
        raise TypeError("give either write or text")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            if text is not None:
                file.write(text.encode("utf-8"))
            else:
                write(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; a plain file is not
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
