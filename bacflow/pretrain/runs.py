"""A pretraining run's folder as it stands on disk, read without PyTorch (planning reads it too): its checkpoints,
and the family of the model it holds."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from bacflow.bacformer.model_families import ModelFamily, family_of

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def newest_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None. The Trainer writes ``trainer_state.json`` last,
    so a checkpoint cut off while being written has none (or a truncated one) and is passed over."""
    candidates = []
    for path in Path(folder).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            candidates.append((int(match.group(1)), path))
    for _, path in sorted(candidates, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("%s is incomplete (no readable trainer_state.json): skipped", path)
            continue
        return path
    return None


def run_family(run_dir: str | Path) -> tuple[ModelFamily, Path] | None:
    """The family of the Bacformer that the pretraining run in `run_dir` holds, and the config.json that says so: its
    model's, else its newest checkpoint's (a run stopped before its first model); None for a run with neither."""
    run_dir = Path(run_dir)
    for folder in (run_dir / "model", newest_checkpoint(run_dir / "checkpoints")):
        if folder is not None and (folder / "config.json").is_file():
            return family_of(folder), folder / "config.json"
    return None
