"""The workflow's stages as plain functions: what each Snakemake script calls, usable without Snakemake."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bacflow.core.errors import InputError
from bacflow.core.freshness import CONTENT_KEY, content_id
from bacflow.core.provenance import provenance
from bacflow.core.samples import Sample
from bacflow.core.tables import atomic_path, remove_stale_shards, write_parquet
from bacflow.proteins.annotate import QC_SCHEMA, AnnotationParams, annotate_shard
from bacflow.proteins.unique import write_shard_unique

log = logging.getLogger("bacflow")
#: Genomes named per quarantine reason in the summary printed at the end of a run (the rest are counted).
_NAMED_GENOMES = 10


def proteins_shard(
    members: Sequence[Sample],
    config: dict[str, Any],
    shard: str,
    proteins_path: str | Path,
    qc_path: str | Path,
    unique_path: str | Path,
    threads: int = 1,
) -> None:
    """Annotate one shard and write its protein table, its QC table and its distinct sequences (the first step
    of the buckets, `bacflow.proteins.unique`); nothing at all if `strict` fails."""
    samples = list(members)
    params = AnnotationParams.from_config(config)
    log.info("shard %s: %d genomes, %d threads, %s", shard, len(samples), threads, params)
    proteins, qc = annotate_shard(samples, params, shard, threads)
    quarantined = [row for row in qc.to_pylist() if row["quarantine_reason"]]
    for row in quarantined:
        log.warning("quarantined %s: %s", row["genome_id"], row["quarantine_reason"])
    if quarantined and config.get("strict", False):
        raise InputError(
            f"strict: {len(quarantined)} genome(s) of shard {shard} quarantined; first: "
            f"{quarantined[0]['genome_id']}: {quarantined[0]['quarantine_reason']}"
        )
    metadata = provenance("proteins", {"annotation": params.as_dict(), "strict": config.get("strict", False)})
    write_parquet(proteins, proteins_path, {**metadata, CONTENT_KEY: content_id(proteins)})
    write_parquet(qc, qc_path, metadata)
    distinct = write_shard_unique(proteins, unique_path)
    log.info(
        "shard %s: %d proteins (%d distinct), %d quarantined", shard, proteins.num_rows, distinct, len(quarantined)
    )


def gather_qc(
    shard_qc_paths: Iterable[str | Path],
    genomes_path: str | Path,
    summary_path: str | Path,
    proteins_paths: Iterable[str | Path] = (),
) -> str:
    """Concatenate the shards' QC rows into one table and write a plain-text summary; return the summary.

    The shards given are the plan's: other shards' files in the proteins and QC folders are removed (see
    `remove_stale_shards`), so that those folders read as datasets hold this cohort only.
    """
    shard_qc_paths = list(shard_qc_paths)
    for path in remove_stale_shards([*shard_qc_paths, *proteins_paths]):
        log.info("removed %s: not a shard of this run's plan", path)
    tables = [pq.read_table(path, schema=QC_SCHEMA) for path in shard_qc_paths]
    qc = pa.concat_tables(tables) if tables else QC_SCHEMA.empty_table()
    write_parquet(qc, genomes_path, provenance("qc", {"shards": len(tables)}))
    quarantined: dict[str, list[str]] = {}
    for genome_id, reason in zip(
        qc.column("genome_id").to_pylist(), qc.column("quarantine_reason").to_pylist(), strict=False
    ):
        if reason:
            quarantined.setdefault(_reason_kind(reason), []).append(genome_id)
    lines = [
        f"bacflow proteins: {qc.num_rows} genomes, {sum(qc.column('proteins').to_pylist())} proteins, "
        f"{sum(map(len, quarantined.values()))} quarantined"
    ]
    for reason, genomes in sorted(quarantined.items(), key=lambda item: -len(item[1])):
        named = ", ".join(genomes[:_NAMED_GENOMES]) + (
            f" and {len(genomes) - _NAMED_GENOMES} more" if len(genomes) > _NAMED_GENOMES else ""
        )
        lines.append(f"  {len(genomes)} x {reason}: {named}")
    if quarantined:
        lines.append(f"  (details: quarantine_reason in {genomes_path})")
    summary = "\n".join(lines) + "\n"
    with atomic_path(summary_path) as temporary:
        temporary.write_text(summary)
    return summary


def _reason_kind(reason: str) -> str:
    """The part of a quarantine reason that does not name the file, for grouping in the summary."""
    return reason.split(": ", 1)[-1]
