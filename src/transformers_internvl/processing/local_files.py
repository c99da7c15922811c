"""Local media paths must name regular files.

`open()` on a FIFO blocks until some other process writes to it (forever, if none does), and a character device such
as `/dev/zero` or `/dev/urandom` never ends: an image or video path naming one would hang the processor or fill the
memory. Directories fail too, with an `IsADirectoryError` that does not say which argument. `check_regular_file`
refuses all of these, before anything is opened, with a `ValueError` naming the argument and the path.
"""

from __future__ import annotations

import os
import stat

__all__ = ["check_regular_file"]


def check_regular_file(path: str, name: str, kind: str) -> None:
    """Refuse an existing `path` that is not a regular file (symbolic links are followed).

    Args:
        path: an existing local path.
        name: the argument, for the message (e.g. `images[0]`).
        kind: what was expected, for the message (`"an image"`, `"a video"`).

    Raises:
        ValueError: `path` is a directory, a FIFO, a socket or a device.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return
    what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device file)"
    raise ValueError(f"`{name}`: {path!r} is {what}; expected {kind} file.")
