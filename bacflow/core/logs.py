"""Logging for the workflow's scripts: everything goes to the rule's log file, tracebacks included (bad input:
its one-line message, also on stderr)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bacflow.core.errors import InputError


@contextmanager
def logging_to(path: str | Path) -> Iterator[logging.Logger]:
    """Send log records and uncaught errors of the enclosed block to `path` (and re-raise errors; an
    `InputError` exits with status 1 instead)."""
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
    except InputError as error:
        # Bad input, not a bug: its message names the file, row or key, so the log and Snakemake's output get
        # that one line, and the job fails without a traceback.
        logger.error("%s", error)
        print(f"bacflow: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException:
        logger.exception("failed")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
        sys.stderr.flush()
