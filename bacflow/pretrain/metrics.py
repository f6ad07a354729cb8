"""Pretraining metrics: masked-family accuracy, the metrics CSV, and its plot.

Validation accuracy counts the genuinely masked proteins (token kind MASK) under the masked objective, not the
12.5 % of targets whose vector stays in the input, and every next-protein target (END included) under the
causal one. Beside top-1 and top-5 it gives the accuracy of always predicting the training split's most
frequent family, the baseline a model has to beat.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import EvalPrediction, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from bacflow.bacformer.modeling_bacformer import IGNORE_INDEX, SPECIAL_TOKENS
from bacflow.core.tables import atomic_path

#: Columns of metrics.csv: one row per log event (training rows and evaluation rows fill different columns).
CSV_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "eval_loss",
    "eval_top1_accuracy",
    "eval_top5_accuracy",
    "eval_majority_accuracy",
)
TOP_K = 5


def family_hits(
    logits: torch.Tensor, labels: torch.Tensor, kinds: torch.Tensor, causal: bool, majority_family: int
) -> torch.Tensor:
    """Per genome of the batch: (targets, top-1 hits, top-5 hits, hits of the majority family), shape (batch, 4).

    ``logits`` are the model's: (n_labelled, classes) in the row-major order of ``labels != -100`` for the
    masked objective, (batch, seq, classes) for the causal one, whose position t predicts label t + 1.
    """
    if causal:
        targets, rows = labels[:, 1:], logits[:, :-1]
        counted = targets != IGNORE_INDEX
        genome = counted.nonzero()[:, 0]
        rows, targets = rows[counted], targets[counted]
    else:
        labelled = labels != IGNORE_INDEX
        masked = kinds[labelled] == SPECIAL_TOKENS["MASK"]
        genome = labelled.nonzero()[:, 0][masked]
        rows, targets = logits[masked], labels[labelled][masked]
    top = rows.topk(min(TOP_K, rows.shape[-1]), dim=-1).indices
    hits = torch.stack(
        [
            torch.ones_like(targets),
            top[:, 0] == targets,
            (top == targets[:, None]).any(dim=-1),
            targets == majority_family,
        ],
        dim=1,
    ).to(torch.float64)
    counts = torch.zeros(labels.shape[0], hits.shape[1], dtype=torch.float64, device=hits.device)
    return counts.index_add_(0, genome, hits)


class FamilyAccuracy:
    """``compute_metrics`` for the Trainer's ``batch_eval_metrics`` mode: sums `family_hits` over the batches."""

    def __init__(self) -> None:
        self.totals = torch.zeros(4, dtype=torch.float64)

    def __call__(self, prediction: EvalPrediction, compute_result: bool) -> dict[str, float]:
        self.totals += torch.as_tensor(prediction.predictions).detach().to("cpu", torch.float64).sum(dim=0)
        if not compute_result:
            return {}
        targets, top1, top5, majority = self.totals.tolist()
        self.totals.zero_()
        share = (lambda hits: hits / targets) if targets else (lambda hits: math.nan)
        return {"top1_accuracy": share(top1), "top5_accuracy": share(top5), "majority_accuracy": share(majority)}


def write_metrics_csv(log_history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """All log events so far, one row each, written atomically (the file is rewritten from the Trainer's log
    history, which a resumed run restores from its checkpoint, so rows never repeat or go missing)."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(entry for entry in log_history if set(entry) & set(CSV_COLUMNS[2:]))


class MetricsCsv(TrainerCallback):
    """Keeps ``metrics.csv`` up to date at every log event (main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if state.is_world_process_zero:
            write_metrics_csv(state.log_history, self.path)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if state.is_world_process_zero:
            write_metrics_csv(state.log_history, self.path)


# ---------------------------------------------------------------------------------------------------
# The plot: a small SVG, so that the report needs no plotting library.

_PANELS = (
    ("loss", (("loss", "training", "#1f77b4"), ("eval_loss", "validation", "#d62728"))),
    (
        "validation accuracy",
        (
            ("eval_top1_accuracy", "top-1", "#2ca02c"),
            ("eval_top5_accuracy", "top-5", "#9467bd"),
            ("eval_majority_accuracy", "most frequent family", "#7f7f7f"),
        ),
    ),
    ("learning rate", (("learning_rate", "learning rate", "#ff7f0e"),)),
    ("tokens per second", (("tokens_per_second", "training", "#17becf"),)),
)
_WIDTH, _HEIGHT, _MARGIN = 420, 240, 48


def _panel(rows: list[dict[str, str]], title: str, series: tuple, left: int, top: int) -> list[str]:
    points = {
        key: [(float(row["step"]), float(row[key])) for row in rows if row.get(key) not in (None, "")]
        for key, _, _ in series
    }
    values = [point for line in points.values() for point in line if math.isfinite(point[1])]
    inner_w, inner_h = _WIDTH - 2 * _MARGIN, _HEIGHT - 2 * _MARGIN
    parts = [
        f'<text x="{left + _WIDTH / 2}" y="{top + 20}" text-anchor="middle" font-weight="bold">{title}</text>',
        f'<rect x="{left + _MARGIN}" y="{top + _MARGIN}" width="{inner_w}" height="{inner_h}" '
        'fill="none" stroke="#999"/>',
    ]
    if not values:
        return parts + [f'<text x="{left + _WIDTH / 2}" y="{top + _HEIGHT / 2}" text-anchor="middle">no data</text>']
    x_lo, x_hi = min(x for x, _ in values), max(x for x, _ in values)
    y_lo, y_hi = min(y for _, y in values), max(y for _, y in values)
    x_span, y_span = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or 1.0

    def xy(x: float, y: float) -> str:
        return (
            f"{left + _MARGIN + (x - x_lo) / x_span * inner_w:.1f},"
            f"{top + _MARGIN + (1 - (y - y_lo) / y_span) * inner_h:.1f}"
        )

    for label, value, anchor in (
        (f"{y_hi:.4g}", top + _MARGIN + 4, "end"),
        (f"{y_lo:.4g}", top + _HEIGHT - _MARGIN, "end"),
    ):
        parts.append(f'<text x="{left + _MARGIN - 4}" y="{value}" text-anchor="{anchor}">{label}</text>')
    parts.append(
        f'<text x="{left + _WIDTH / 2}" y="{top + _HEIGHT - _MARGIN + 16}" text-anchor="middle">step '
        f"{x_lo:.0f} to {x_hi:.0f}</text>"
    )
    for number, (key, name, colour) in enumerate(series):
        line = [point for point in points[key] if math.isfinite(point[1])]
        if line:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                f'points="{" ".join(xy(*p) for p in line)}"/>'
            )
        parts.append(
            f'<text x="{left + _MARGIN + 4}" y="{top + _HEIGHT - 8 - 12 * (len(series) - 1 - number)}" '
            f'fill="{colour}">{name}</text>'
        )
    return parts


def plot_metrics(csv_path: str | Path, svg_path: str | Path) -> None:
    """Loss, validation accuracy (with the most-frequent-family baseline), learning rate and tokens/s by step."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * _WIDTH}" height="{2 * _HEIGHT}" '
        'font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for number, (title, series) in enumerate(_PANELS):
        parts += _panel(rows, title, series, (number % 2) * _WIDTH, (number // 2) * _HEIGHT)
    Path(svg_path).write_text("\n".join(parts + ["</svg>"]) + "\n")
