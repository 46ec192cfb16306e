"""Opening files below a directory that others write to (artifact roots, a dataset
directory a trainer shares), so that no symlink or FIFO planted there leads the operator
to read its own files or hang."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO


def open_beneath(root: Path, parts: Sequence[str]) -> BinaryIO:
    """The regular file root/parts, opened one component at a time without following a
    symlink (OSError ELOOP), nor blocking on a FIFO; FileNotFoundError when there is none.
    Blocking: call it in a thread."""
    no_follow = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(part, no_follow | os.O_DIRECTORY, dir_fd=directory)
            os.close(directory)
            directory = inner
        # Non-blocking, so that a FIFO planted below a root cannot hang the open.
        fd = os.open(parts[-1], no_follow | os.O_NONBLOCK, dir_fd=directory)
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
