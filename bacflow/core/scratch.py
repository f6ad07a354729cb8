"""Private working folders that a killed job does not leave behind for good."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_dir(parent: str | Path | None, prefix: str) -> Iterator[Path]:
    """A new folder in `parent` (the system's temporary folder when None), removed when the block ends.

    A job killed with SIGKILL cannot remove its folder, so every call first removes the folders with the
    same `prefix` that processes of this host left behind and that are no longer running: the folder's
    name holds its host and process id. (A process id reused since only delays the clean-up.)
    """
    parent = Path(parent or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^\w.]", "_", socket.gethostname())
    left = re.compile(rf"^{re.escape(prefix)}-{re.escape(host)}-(\d+)-\w+$")
    for folder in parent.glob(f"{prefix}-{host}-*"):
        match = left.match(folder.name)
        if match and folder.is_dir() and not _running(int(match[1])):
            shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=f"{prefix}-{host}-{os.getpid()}-") as folder:
        yield Path(folder)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
