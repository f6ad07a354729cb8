"""A thin runner for the MMseqs2 command-line program: finding it, its version, running one module.

MMseqs2 is a system dependency: Debian's ``mmseqs2`` package locally (``make system-deps``), bioconda's
``mmseqs2`` under ``--sdm conda`` (``envs/mmseqs.yaml``). Its output goes to the log, line by line, so
that a long clustering shows its progress there.
"""

from __future__ import annotations

import collections
import functools
import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

PROGRAM = "mmseqs"
# Lines of MMseqs2's output quoted in the error when a module fails.
_ERROR_TAIL_LINES = 15


class MmseqsError(RuntimeError):
    """MMseqs2 is missing, or one of its modules failed; the message says which and why."""


def executable() -> str:
    """The path of the ``mmseqs`` program, or one clear error saying how to install it."""
    path = shutil.which(PROGRAM)
    if path is None:
        raise MmseqsError(
            "MMseqs2 is not installed: there is no 'mmseqs' program on PATH. Install it with "
            "`make system-deps` (Debian/Ubuntu package mmseqs2), or run Snakemake with --sdm conda "
            "(envs/mmseqs.yaml)"
        )
    return path


def version() -> str:
    """The version MMseqs2 reports, e.g. ``14-7e284+ds-1+b2`` (Debian) or ``14.7e284`` (bioconda)."""
    return _version(executable())


@functools.cache
def _version(program: str) -> str:
    result = subprocess.run([program, "version"], capture_output=True, text=True)
    if result.returncode != 0:
        raise MmseqsError(f"`{program} version` failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def run(module: str, *args: str | Path | int | float) -> None:
    """Run ``mmseqs <module> <args>``, logging its output; raise `MmseqsError` if it fails."""
    command = [executable(), module, *map(str, args)]
    log.info("running %s", " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=_ERROR_TAIL_LINES)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log.info("mmseqs %s: %s", module, line)
    if process.returncode != 0:
        quoted = "\n  ".join(tail)
        raise MmseqsError(f"mmseqs {module} failed (exit {process.returncode}); its last output:\n  {quoted}")
