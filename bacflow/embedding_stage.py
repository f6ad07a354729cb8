"""The ``embeddings`` stage: bucket jobs embed what the store lacks; shard jobs gather vectors back.

1. ``embed_bucket`` (one GPU job per bucket of unique sequences): looks the bucket's sequences up in the
   store of the recipe, embeds the missing ones (each exactly once; parts written as it goes), then
   writes the run's ``embeddings/buckets/bucket=NNNN.parquet``: the bucket's vectors once per genome shard
   that uses them, sorted by shard in row groups, so that a shard reads only its own rows.
2. ``gather_shard`` (one CPU job per genome shard): reads its rows from every bucket file and writes
   ``embeddings/shards/shard=NNNNN.parquet``, one vector per protein in genome order, plus per-genome QC.
3. ``embedding_qc``: the shards' QC rows in one table, ``qc/embeddings.parquet``.

The recipe key is worked out in the bucket jobs, where the device (and so the "auto" dtype) and a local
model's checksum are known; every output names it in its metadata, and the gather refuses vectors of
two recipes in one shard.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bacflow.embedding_store import EmbeddingStore, part_schema, vector_array, vector_type
from bacflow.errors import InputError
from bacflow.esm_model import choose_device, load_esm, resolve_model
from bacflow.esm_recipe import EmbeddingRecipe
from bacflow.provenance import CORE_PACKAGES, provenance
from bacflow.tables import parquet_writer, read_metadata, write_parquet
from bacflow.unique import bucket_of

if TYPE_CHECKING:
    import torch

log = logging.getLogger("bacflow")

ML_PACKAGES = (*CORE_PACKAGES, "torch", "transformers", "huggingface_hub")
RECIPE_KEY = "bacflow.embedding_recipe_key"
RECIPE = "bacflow.embedding_recipe"
# ~16 MB of float32 vectors of the 35M model per row group: a shard's rows span few row groups.
_ROW_GROUP_ROWS = 8192

QC_SCHEMA = pa.schema(
    [
        ("genome_id", pa.string()),
        ("proteins", pa.int32()),
        ("truncated_proteins", pa.int32()),  # longer than max_length - 2 residues: only their start was seen
        ("distinct_sequences", pa.int32()),
        ("sequences_embedded", pa.int32()),  # distinct sequences this run's bucket jobs embedded
        ("sequences_reused", pa.int32()),  # distinct sequences found in the store
    ]
)


@dataclass(frozen=True)
class EmbeddingSettings:
    """The ``embeddings:`` config keys that bucket jobs use (the model is passed separately)."""

    dtype: str = "auto"
    pooling: str = "mean"
    max_length: int = 1024
    vector_dtype: str = "float32"
    gpu_token_budget: int = 65536
    cpu_token_budget: int = 2048
    checkpoint_sequences: int = 50000

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EmbeddingSettings:
        return cls(**{field.name: config[field.name] for field in fields(cls) if field.name in config})

    def token_budget(self, device: torch.device) -> int:
        """Tokens per batch, padding included, on `device`."""
        return self.gpu_token_budget if device.type == "cuda" else self.cpu_token_budget


def bucket_schema(vector: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("shard", pa.string()),
            ("seq_hash", pa.string()),
            ("vector", vector),
            ("truncated", pa.bool_()),
            ("embedded", pa.bool_()),  # embedded by this job (else found in the store)
        ]
    )


def shard_schema(vector: pa.DataType) -> pa.Schema:
    """The gathered vectors of a genome shard: one row per protein, in the protein table's order."""
    return pa.schema(
        [
            ("genome_id", pa.string()),
            ("contig_index", pa.int32()),
            ("protein_index", pa.int32()),
            ("seq_hash", pa.string()),
            ("vector", vector),
        ]
    )


def read_bucket(path: str | Path, bucket: int, n_buckets: int) -> pa.Table:
    """The bucket's (seq_hash, sequence) rows, checked."""
    try:
        table = pq.read_table(path, columns=["seq_hash", "sequence"])
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"bucket file {path}: unreadable or lacks seq_hash/sequence ({error})") from None
    for row, (seq_hash, sequence) in enumerate(zip(table.column(0).to_pylist(), table.column(1).to_pylist())):
        if not sequence or not seq_hash:
            raise InputError(f"bucket file {path}, row {row}: empty sequence or seq_hash")
        if bucket_of(seq_hash, n_buckets) != bucket:
            raise InputError(
                f"bucket file {path}, row {row}: seq_hash {seq_hash} belongs to bucket "
                f"{bucket_of(seq_hash, n_buckets)} of {n_buckets}, not {bucket} (made with another bucket count?)"
            )
    return table


def embed_bucket(
    bucket_path: str | Path,
    shard_unique_paths: Mapping[str, str | Path],
    out_path: str | Path,
    *,
    bucket: int,
    n_buckets: int,
    model: str,
    revision: str | None,
    store_root: str | Path,
    settings: EmbeddingSettings,
    threads: int = 1,
) -> dict[str, Any]:
    """Make sure the store holds every sequence of one bucket; write the bucket's vectors by shard.

    `shard_unique_paths` maps each genome shard to its distinct-sequence table (unique/shards/), which
    says which of the bucket's sequences the shard needs. Returns counts for the log and tests.
    """
    import torch

    torch.set_num_threads(threads)
    sequences = read_bucket(bucket_path, bucket, n_buckets)
    device, dtype = choose_device(settings.dtype)
    source = resolve_model(model, revision)
    recipe = EmbeddingRecipe(
        model=source.label,
        revision=source.revision,
        local=source.local,
        dtype=dtype,
        pooling=settings.pooling,
        max_length=settings.max_length,
        vector_dtype=settings.vector_dtype,
    )
    store = EmbeddingStore(store_root, recipe).open()
    log.info("bucket %04d: %d sequences; recipe %s on %s; store %s", bucket, sequences.num_rows, recipe.key, device, store.folder)
    metadata = {
        **provenance("embed_bucket", {"bucket": bucket, "buckets": n_buckets, **asdict(settings)}, ML_PACKAGES),
        RECIPE_KEY: recipe.key,
        RECIPE: json.dumps(recipe.description(), sort_keys=True),
        "bacflow.embedding_device": f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'})",
    }

    hashes = sequences.column("seq_hash").combine_chunks()
    found = store.lookup(hashes, bucket, n_buckets)
    known = found.column("seq_hash") if found is not None else pa.array([], pa.string())
    missing = sequences.filter(pc.invert(pc.is_in(hashes, value_set=known)))
    log.info("bucket %04d: %d in the store, %d to embed", bucket, len(known), missing.num_rows)
    new_parts: list[pa.Table] = []
    model_calls = 0
    if missing.num_rows:
        new_parts, model_calls = _embed_missing(missing, source.path, device, dtype, settings, store, bucket, n_buckets, metadata)
    dim = _hidden_size(source.path)
    stored = [table.append_column("embedded", pa.repeat(True, table.num_rows)) for table in new_parts]
    if found is not None:
        stored.append(found.append_column("embedded", pa.repeat(False, found.num_rows)))
    vectors = pa.concat_tables(stored) if stored else part_schema(dim, recipe.vector_dtype).empty_table().append_column(
        "embedded", pa.array([], pa.bool_())
    )
    if vectors.num_rows != sequences.num_rows:
        raise RuntimeError(f"bucket {bucket}: {vectors.num_rows} vectors for {sequences.num_rows} sequences")
    schema = bucket_schema(vector_type(dim, recipe.vector_dtype))
    _write_by_shard(vectors, shard_unique_paths, out_path, bucket, schema, metadata)
    return {
        "recipe": recipe.key,
        "sequences": sequences.num_rows,
        "embedded": missing.num_rows,
        "reused": len(known),
        "model_calls": model_calls,
    }


def _embed_missing(
    missing: pa.Table,
    model_path: str,
    device: Any,
    dtype: str,
    settings: EmbeddingSettings,
    store: EmbeddingStore,
    bucket: int,
    n_buckets: int,
    metadata: dict[str, str],
) -> tuple[list[pa.Table], int]:
    """Embed `missing`, adding a store part every `checkpoint_sequences` vectors; return the parts."""
    import torch

    from bacflow.esm_embed import Embedder
    from bacflow.esm_encoder import EsmEncoder

    model, tokenizer = load_esm(model_path, device, getattr(torch, dtype))
    embedder = Embedder(
        EsmEncoder(model), tokenizer, pooling=settings.pooling, max_length=settings.max_length, token_budget=settings.token_budget(device)
    )
    embedder.check_probe(model_path)
    probe_calls = embedder.model_calls
    hashes = missing.column("seq_hash").to_numpy(zero_copy_only=False)
    parts, pending = [], []

    def flush() -> None:
        positions = np.concatenate([batch.positions for batch in pending])
        table = pa.table(
            {
                "seq_hash": pa.array(hashes[positions], pa.string()),
                "vector": vector_array(torch.cat([batch.vectors for batch in pending]).cpu().numpy(), settings.vector_dtype),
                "tokens": pa.array(np.concatenate([batch.tokens for batch in pending]), pa.int32()),
                "truncated": pa.array(np.concatenate([batch.truncated for batch in pending])),
            }
        )
        path = store.add(table, bucket, n_buckets, metadata)
        log.info("bucket %04d: stored %d vectors in %s", bucket, table.num_rows, path.name)
        parts.append(table.sort_by("seq_hash"))
        pending.clear()

    for batch in embedder.batches(missing.column("sequence").to_pylist()):
        pending.append(batch)
        if sum(len(done.positions) for done in pending) >= settings.checkpoint_sequences:
            flush()
    if pending:
        flush()
    return parts, embedder.model_calls - probe_calls


def _hidden_size(model_path: str) -> int:
    config = json.loads((Path(model_path) / "config.json").read_text())
    return int(config["hidden_size"])


def _write_by_shard(
    vectors: pa.Table,
    shard_unique_paths: Mapping[str, str | Path],
    out_path: str | Path,
    bucket: int,
    schema: pa.Schema,
    metadata: dict[str, str],
) -> None:
    """One row per (shard, sequence of this bucket that the shard has), sorted by shard."""
    with parquet_writer(out_path, schema, metadata) as writer:
        for shard in sorted(shard_unique_paths):
            wanted = pq.read_table(shard_unique_paths[shard], columns=["seq_hash"], filters=[("bucket", "=", bucket)])
            rows = pc.index_in(wanted.column(0), value_set=vectors.column("seq_hash"))
            if rows.null_count:
                raise InputError(
                    f"{shard_unique_paths[shard]} lists sequences that bucket {bucket} lacks: the unique tables "
                    "are out of date (rerun with --forcerun unique_bucket)"
                )
            table = vectors.take(rows).select(schema.names[1:])
            table = pa.table([pa.repeat(shard, table.num_rows).cast(pa.string()), *table.columns], schema=schema)
            for start in range(0, table.num_rows, _ROW_GROUP_ROWS):
                writer.write_table(table.slice(start, _ROW_GROUP_ROWS))


def gather_shard(
    proteins_path: str | Path, bucket_paths: Iterable[str | Path], shard: str, out_path: str | Path, qc_path: str | Path
) -> int:
    """Write the shard's protein vectors in genome order, and its per-genome QC; return the protein count."""
    proteins = pq.read_table(proteins_path, columns=["genome_id", "contig_index", "protein_index", "seq_hash"])
    pieces, recipes, schema = [], {}, None
    for path in bucket_paths:
        piece = pq.read_table(path, filters=[("shard", "=", shard)])
        schema = schema or piece.schema
        if piece.num_rows:
            pieces.append(piece.select(["seq_hash", "vector", "truncated", "embedded"]))
            recipes.setdefault(read_metadata(path)[RECIPE_KEY], path)
    if len(recipes) > 1:
        raise InputError(
            f"shard {shard}: bucket outputs of different embedding recipes ({', '.join(f'{k} in {p}' for k, p in recipes.items())}); "
            "a bucket job probably ran without its GPU (dtype auto). Set embeddings.dtype and rerun the buckets."
        )
    if schema is None:
        raise InputError("no bucket outputs to gather from")
    vectors = pa.concat_tables(pieces) if pieces else schema.empty_table().select(["seq_hash", "vector", "truncated", "embedded"])
    rows = pc.index_in(proteins.column("seq_hash"), value_set=vectors.column("seq_hash"))
    if rows.null_count:
        first = proteins.filter(pc.is_null(rows)).slice(0, 1).to_pylist()[0]
        raise InputError(
            f"shard {shard}: no vector for {rows.null_count} proteins (e.g. genome {first['genome_id']}, protein "
            f"{first['protein_index']}, seq_hash {first['seq_hash']}): bucket outputs are out of date"
        )
    picked = vectors.take(rows)
    table = pa.table([*proteins.columns, picked.column("vector")], schema=shard_schema(schema.field("vector").type))
    metadata = {**provenance("embed_gather", {"shard": shard}, ML_PACKAGES), **_recipe_metadata(next(iter(recipes.values()), None))}
    write_parquet(table, out_path, metadata)
    write_parquet(_genome_qc(proteins, picked), qc_path, metadata)
    return table.num_rows


def _recipe_metadata(bucket_path: str | Path | None) -> dict[str, str]:
    if bucket_path is None:
        return {}
    stored = read_metadata(bucket_path)
    return {key: stored[key] for key in (RECIPE_KEY, RECIPE)}


def _genome_qc(proteins: pa.Table, picked: pa.Table) -> pa.Table:
    per_protein = pa.table(
        {
            "genome_id": proteins.column("genome_id"),
            "seq_hash": proteins.column("seq_hash"),
            "truncated": picked.column("truncated"),
            "embedded": picked.column("embedded"),
        }
    )
    counts = per_protein.group_by("genome_id", use_threads=False).aggregate(
        [("seq_hash", "count"), ("truncated", "sum"), ("seq_hash", "count_distinct")]
    )
    distinct = per_protein.group_by(["genome_id", "seq_hash"], use_threads=False).aggregate([("embedded", "min")])
    embedded = distinct.group_by("genome_id", use_threads=False).aggregate([("embedded_min", "sum")])
    counts = counts.join(embedded, "genome_id")
    order = {genome: index for index, genome in enumerate(dict.fromkeys(proteins.column("genome_id").to_pylist()))}
    rows = sorted(counts.to_pylist(), key=lambda row: order[row["genome_id"]])
    return pa.Table.from_pylist(
        [
            {
                "genome_id": row["genome_id"],
                "proteins": row["seq_hash_count"],
                "truncated_proteins": row["truncated_sum"] or 0,
                "distinct_sequences": row["seq_hash_count_distinct"],
                "sequences_embedded": row["embedded_min_sum"] or 0,
                "sequences_reused": row["seq_hash_count_distinct"] - (row["embedded_min_sum"] or 0),
            }
            for row in rows
        ],
        schema=QC_SCHEMA,
    )


def embedding_qc(shard_qc_paths: Iterable[str | Path], out_path: str | Path) -> int:
    """Concatenate the shards' per-genome embedding QC; return the number of genomes."""
    shard_qc_paths = list(shard_qc_paths)
    tables = [pq.read_table(path, schema=QC_SCHEMA) for path in shard_qc_paths]
    qc = pa.concat_tables(tables) if tables else QC_SCHEMA.empty_table()
    recipes = {read_metadata(path).get(RECIPE_KEY) for path in shard_qc_paths} - {None}
    write_parquet(qc, out_path, {**provenance("embed_qc", {"shards": len(tables)}), RECIPE_KEY: ",".join(sorted(recipes))})
    return qc.num_rows
