"""The tables of the ``bacformer`` stage: their schemas and metadata keys, and the cohort's genome table.

Kept apart from `bacflow.bacformer.stage` (which runs the model) so that readers of the tables, such as the
report, need no PyTorch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bacflow.core.errors import InputError
from bacflow.core.freshness import check_lineage, lineage
from bacflow.core.provenance import provenance
from bacflow.core.tables import parquet_writer, read_metadata, remove_stale_shards
from bacflow.embeddings.recipe import RECIPE, RECIPE_KEY
from bacflow.embeddings.store import vector_type

log = logging.getLogger("bacflow")

#: Metadata keys: the model that made a table (JSON), and the embedding recipe (ESM-2 or ESM-C) of its input vectors.
MODEL_KEY = "bacflow.bacformer_model"
RECIPE_KEYS = (RECIPE_KEY, RECIPE)
PARAMS_KEY, VERSIONS_KEY = "bacflow.params", "bacflow.tool_versions"


def protein_schema(dim: int, vector_dtype: str) -> pa.Schema:
    """``bacformer/<model>/proteins/``: one contextual vector per protein, in genome order."""
    return pa.schema(
        [
            ("genome_id", pa.string()),
            ("protein_index", pa.int32()),
            ("protein_id", pa.string()),
            ("contig", pa.string()),  # the contig's id (contig_id of the protein table)
            ("contig_index", pa.int32()),
            ("vector", vector_type(dim, vector_dtype)),
        ]
    )


def genome_schema(dim: int) -> pa.Schema:
    """``bacformer/<model>/genomes.parquet``: QC columns and the genome embedding, one row per genome."""
    return pa.schema(
        [
            ("genome_id", pa.string()),
            ("proteins", pa.int32()),
            ("contigs", pa.int32()),  # contigs with proteins: each is followed by a separator token
            ("tokens", pa.int32()),  # CLS, proteins, separators and END of the whole genome
            ("mode", pa.string()),  # whole (fits the limit), truncated or windowed
            ("windows", pa.int32()),  # forward passes of this genome (1 unless windowed)
            ("proteins_embedded", pa.int32()),
            ("proteins_cut", pa.int32()),  # left out by truncation: no vector, not in the mean
            ("embedding", vector_type(dim, "float32")),
        ]
    )


def gather_genomes(
    shard_paths: Sequence[str | Path],
    out_path: str | Path,
    protein_paths: Sequence[str | Path] = (),
    sources: Sequence[str | Path] | None = None,
    job_identity: str | None = None,
) -> int:
    """Stream the shards' genome rows into one table, a shard at a time; return the genome count.

    Refuses shards made by different models or from different embedding recipes, and, with `sources` (the
    shards' protein tables, in the same order), shards made from other proteins than those tables hold. Other
    shards' files in the genome-shard and protein folders are removed (see `remove_stale_shards`).
    """
    if not shard_paths:
        raise InputError("no genome shards to gather")
    for path in remove_stale_shards([*shard_paths, *protein_paths]):
        log.info("removed %s: not a shard of this run's plan", path)
    if sources is not None:
        check_lineage(shard_paths, sources)
    identities = {}
    for path in shard_paths:
        stored = read_metadata(path)
        identity = (stored.get(MODEL_KEY), *(stored.get(key) for key in RECIPE_KEYS))
        identities.setdefault(identity, path)
    if len(identities) > 1:
        first, second = list(identities.values())[:2]
        raise InputError(
            f"genome shards of different models or embedding recipes ({first}, {second}): rerun the bacformer "
            "shards (e.g. --forcerun bacformer_shard)"
        )
    stored = read_metadata(shard_paths[0])
    # The rows were computed by the shard jobs: the table carries their parameters and tool versions (PyTorch,
    # transformers), not only those of this concatenation.
    params = {key: value for key, value in json.loads(stored.get(PARAMS_KEY, "{}")).items() if key != "shard"}
    metadata = {
        **provenance("bacformer_genomes", {"shards": len(shard_paths), **params}),
        **{key: stored[key] for key in (VERSIONS_KEY, MODEL_KEY, *RECIPE_KEYS) if key in stored},
        **lineage(None, job_identity),
    }
    schema = pq.read_schema(shard_paths[0]).remove_metadata()
    total = 0
    with parquet_writer(out_path, schema, metadata) as writer:
        for path in shard_paths:
            table = pq.read_table(path)
            writer.write_table(table.replace_schema_metadata(None))
            total += table.num_rows
    return total


def model_identity(path: str | Path) -> dict[str, Any]:
    """The model that made a bacformer table (from its metadata)."""
    return json.loads(read_metadata(path)[MODEL_KEY])
