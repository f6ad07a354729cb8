"""Logging for the workflow's scripts: everything, tracebacks included, goes to the rule's log file."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def logging_to(path: str | Path) -> Iterator[logging.Logger]:
    """Send log records and uncaught errors of the enclosed block to `path` (and re-raise errors)."""
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
    except BaseException:
        logger.exception("failed")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
        sys.stderr.flush()
