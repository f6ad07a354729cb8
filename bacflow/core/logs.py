"""Logging for the workflow's scripts: everything goes to the rule's log file, tracebacks included (bad input or a
full disk: its one-line message, also on stderr)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bacflow.core.errors import FULL_DISK, InputError


@contextmanager
def logging_to(path: str | Path) -> Iterator[logging.Logger]:
    """Send log records and uncaught errors of the enclosed block to `path` (and re-raise errors; an
    `InputError` or a full disk exits with status 1 instead)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    logger = logging.getLogger("bacflow")
    try:
        yield logger
    except BaseException as error:
        message = _one_line(error)
        if message is None:
            logger.exception("failed")
            raise
        # Bad input or a full disk, not a bug: its message names the file, row, key or path, so the log and
        # Snakemake's output get that one line, and the job fails without a traceback.
        logger.error("%s", message)
        print(f"bacflow: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        root.removeHandler(handler)
        handler.close()
        sys.stderr.flush()


def _one_line(error: BaseException) -> str | None:
    """What a job failing with `error` says, where that is one line rather than a traceback."""
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, OSError) and error.errno in FULL_DISK:
        # Outputs written through bacflow.core.tables.atomic_path always name their path; other writes may not.
        return (
            f"{FULL_DISK[error.errno]} at {error.filename}" if error.filename else f"{FULL_DISK[error.errno]}: {error}"
        )
    return None
