"""The ``embeddings`` stage: bucket jobs embed what the store lacks; shard jobs gather vectors back.

1. ``embed_bucket`` (one GPU job per bucket of unique sequences): looks the bucket's sequences up in the
   store of the recipe, embeds the missing ones (each exactly once; parts written as it goes), then
   writes the run's ``embeddings/buckets/bucket=NNNN/``: ``bucket.json`` (the recipe, for every shard
   job) and, for each genome shard whose gathered vectors are missing or out of date, that shard's
   vectors of this bucket (``shard=NNNNN.parquet``), so that a shard job reads only its own rows.
2. ``gather_shard`` (one CPU job per genome shard): reads its rows from every bucket folder and writes
   ``embeddings/shards/shard=NNNNN.parquet``, one vector per protein in genome order, plus per-genome QC,
   then deletes the rows it read. Rows a bucket job did not write for it (a shard job re-run for its
   own reasons) come from the store itself, which is slower but gives the same vectors.
3. ``embedding_qc``: the shards' QC rows in one table, ``qc/embeddings.parquet``.

Bucket folders outlive the run (small once their rows are read), so that the workflow can tell shard jobs
apart: appending genomes re-runs every bucket job (each embeds only the new sequences) but only the new
shards' gathers, since a gathered shard that is still current depends on the bucket folders by their
existence alone (`bacflow.core.freshness` says how, and why every job below the gathers does the same).

The recipe key is worked out in the bucket jobs, where the device (and so the "auto" dtype) and a local
model's checksum are known; every output names it in its metadata, and the gather refuses vectors of
two recipes in one shard.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bacflow.core.errors import InputError
from bacflow.core.freshness import check_lineage, lineage
from bacflow.core.models import choose_device, resolve_model
from bacflow.core.provenance import CORE_PACKAGES, provenance
from bacflow.core.tables import (
    atomic_path,
    read_metadata,
    remove_leftovers,
    remove_stale_buckets,
    remove_stale_shards,
    write_parquet,
)
from bacflow.embeddings.encoders import encoder_family, random_init
from bacflow.embeddings.recipe import RECIPE, RECIPE_KEY, EmbeddingRecipe
from bacflow.embeddings.store import EmbeddingStore, part_schema, vector_array, vector_type
from bacflow.proteins.unique import bucket_filter, bucket_of

if TYPE_CHECKING:
    import torch

log = logging.getLogger("bacflow")

ML_PACKAGES = (*CORE_PACKAGES, "torch", "transformers", "huggingface_hub")
#: Settings that decide only how work is split up, never a vector.
_NO_OUTPUT_EFFECT = ("checkpoint_sequences",)
#: What a bucket folder tells the shard jobs: the recipe, the vector width and type, the bucket.
BUCKET_INFO = "bucket.json"

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

    def output_params(self) -> dict[str, Any]:
        """The settings that can change a vector: what the rules pass as params, whose changes re-run jobs.
        (Token budgets stay: they change which sequences share a batch, which moves vectors by ~1e-7.)"""
        return {key: value for key, value in asdict(self).items() if key not in _NO_OUTPUT_EFFECT}

    def token_budget(self, device: torch.device) -> int:
        """Tokens per batch, padding included, on `device`."""
        return self.gpu_token_budget if device.type == "cuda" else self.cpu_token_budget


def bucket_schema(vector: pa.DataType) -> pa.Schema:
    """A bucket folder's rows for one genome shard."""
    return pa.schema(
        [
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
    for row, (seq_hash, sequence) in enumerate(
        zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=False)
    ):
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
    out_dir: str | Path,
    *,
    gathered_paths: Mapping[str, str | Path],
    bucket: int,
    n_buckets: int,
    model: str,
    revision: str | None,
    store_root: str | Path,
    settings: EmbeddingSettings,
    threads: int = 1,
) -> dict[str, Any]:
    """Make sure the store holds every sequence of one bucket; write the bucket folder `out_dir`.

    `shard_unique_paths` maps each genome shard to its distinct-sequence table (unique/shards/), which
    says which of the bucket's sequences the shard needs; `gathered_paths` maps it to its gathered
    vectors (embeddings/shards/), which decide whether the shard needs rows from this job (see
    `pending_shards`). Returns counts for the log and tests.
    """
    import torch

    torch.set_num_threads(threads)
    sequences = read_bucket(bucket_path, bucket, n_buckets)
    device, dtype, dtype_reason = choose_device(settings.dtype)
    source = resolve_model(model, revision)
    recipe = EmbeddingRecipe(
        model=source.label,
        revision=source.revision,
        local=source.local,
        dtype=dtype,
        pooling=settings.pooling,
        max_length=settings.max_length,
        vector_dtype=settings.vector_dtype,
        encoder=encoder_family(source.path),
        random_init=random_init(source.path),
    )
    store = EmbeddingStore(store_root, recipe).open()
    log.info(
        "bucket %04d: %d sequences; recipe %s on %s; store %s",
        bucket,
        sequences.num_rows,
        recipe.key,
        device,
        store.folder,
    )
    metadata = {
        **provenance("embed_bucket", {"bucket": bucket, "buckets": n_buckets, **asdict(settings)}, ML_PACKAGES),
        RECIPE_KEY: recipe.key,
        RECIPE: json.dumps(recipe.description(), sort_keys=True),
        "bacflow.embedding_device": (
            f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'})"
        ),
        "bacflow.embedding_dtype": f"{dtype} ({dtype_reason})",
    }

    hashes = sequences.column("seq_hash").combine_chunks()
    found = store.lookup(hashes, bucket, n_buckets)
    known = found.column("seq_hash") if found is not None else pa.array([], pa.string())
    missing = sequences.filter(pc.invert(pc.is_in(hashes, value_set=known)))
    log.info("bucket %04d: %d in the store, %d to embed", bucket, len(known), missing.num_rows)
    new_parts: list[pa.Table] = []
    model_calls = 0
    if missing.num_rows:
        new_parts, model_calls = _embed_missing(
            missing, source.path, device, dtype, settings, store, bucket, n_buckets, metadata
        )
    dim = _hidden_size(source.path)
    stored = [table.append_column("embedded", pa.repeat(True, table.num_rows)) for table in new_parts]
    if found is not None:
        stored.append(found.append_column("embedded", pa.repeat(False, found.num_rows)))
    vectors = (
        pa.concat_tables(stored)
        if stored
        else part_schema(dim, recipe.vector_dtype).empty_table().append_column("embedded", pa.array([], pa.bool_()))
    )
    if vectors.num_rows != sequences.num_rows:
        raise RuntimeError(f"bucket {bucket}: {vectors.num_rows} vectors for {sequences.num_rows} sequences")
    pending = pending_shards(shard_unique_paths, gathered_paths, recipe.key)
    log.info("bucket %04d: rows for %d of %d genome shards", bucket, len(pending), len(shard_unique_paths))
    _write_bucket_folder(
        vectors,
        {shard: shard_unique_paths[shard] for shard in pending},
        out_dir,
        bucket,
        n_buckets,
        recipe,
        dim,
        metadata,
    )
    if bucket == 0:
        for path in remove_stale_buckets(Path(out_dir).parent, n_buckets):
            log.info("removed %s: not a bucket of this run's plan", path)
    return {
        "recipe": recipe.key,
        "sequences": sequences.num_rows,
        "embedded": missing.num_rows,
        "reused": len(known),
        "model_calls": model_calls,
        "shards": len(pending),
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

    from bacflow.embeddings.embedder import Embedder
    from bacflow.embeddings.encoders import load_encoder

    encoder, tokenizer = load_encoder(model_path, device, getattr(torch, dtype))
    embedder = Embedder(
        encoder,
        tokenizer,
        pooling=settings.pooling,
        max_length=settings.max_length,
        token_budget=settings.token_budget(device),
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
                "vector": vector_array(
                    torch.cat([batch.vectors for batch in pending]).cpu().numpy(), settings.vector_dtype
                ),
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


def pending_shards(
    shard_unique_paths: Mapping[str, str | Path], gathered_paths: Mapping[str, str | Path], recipe_key: str
) -> list[str]:
    """The genome shards whose gathered vectors are missing, older than their distinct-sequence table, or
    of another recipe: those whose gather will run and needs this bucket's rows."""
    pending = []
    for shard, unique_path in sorted(shard_unique_paths.items()):
        gathered = Path(gathered_paths[shard])
        if (
            not gathered.exists()
            or gathered.stat().st_mtime < Path(unique_path).stat().st_mtime
            or read_metadata(gathered).get(RECIPE_KEY) != recipe_key
        ):
            pending.append(shard)
    return pending


def _write_bucket_folder(
    vectors: pa.Table,
    shard_unique_paths: Mapping[str, str | Path],
    out_dir: str | Path,
    bucket: int,
    n_buckets: int,
    recipe: EmbeddingRecipe,
    dim: int,
    metadata: dict[str, str],
) -> None:
    """bucket.json, and one file per shard of `shard_unique_paths`: its sequences of this bucket. The folder
    appears whole or not at all."""
    remove_leftovers(out_dir)  # of a killed job for this bucket: its rows may be large
    schema = bucket_schema(vector_type(dim, recipe.vector_dtype))
    with atomic_path(out_dir) as folder:
        folder.mkdir()
        for shard, unique_path in shard_unique_paths.items():
            wanted = pq.read_table(unique_path, columns=["seq_hash"], filters=bucket_filter(bucket, n_buckets))
            rows = pc.index_in(wanted.column(0), value_set=vectors.column("seq_hash"))
            if rows.null_count:
                raise InputError(
                    f"{unique_path} lists sequences that bucket {bucket} lacks: the unique tables "
                    "are out of date (rerun with --forcerun unique_bucket)"
                )
            write_parquet(
                vectors.take(rows).select(schema.names).cast(schema), folder / f"shard={shard}.parquet", metadata
            )
        info = {"bucket": bucket, "buckets": n_buckets, "dim": dim, "recipe": recipe.description()}
        (folder / BUCKET_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def gather_shard(
    proteins_path: str | Path,
    bucket_dirs: Iterable[str | Path],
    shard: str,
    out_path: str | Path,
    qc_path: str | Path,
    store_root: str | Path,
    job_identity: str | None = None,
) -> int:
    """Write the shard's protein vectors in genome order, and its per-genome QC; return the protein count.

    Reads the shard's rows of every bucket folder (and deletes them once the outputs are written), or,
    where a bucket job wrote none for this shard, the store of the bucket's recipe. Both outputs record the
    content id of the proteins they were made from and `job_identity` (`bacflow.core.freshness`).
    """
    proteins = pq.read_table(proteins_path, columns=["genome_id", "contig_index", "protein_index", "seq_hash"])
    infos = {Path(folder): _bucket_info(folder) for folder in bucket_dirs}
    recipes = {info["recipe"]["key"]: folder for folder, info in infos.items()}
    if len(recipes) > 1:
        raise InputError(
            f"shard {shard}: bucket outputs of different embedding recipes "
            f"({', '.join(f'{k} in {p}' for k, p in recipes.items())}); "
            "a bucket job probably ran without its GPU (dtype auto). Set embeddings.dtype and rerun the buckets."
        )
    if not infos:
        raise InputError("no bucket outputs to gather from")
    info = next(iter(infos.values()))
    buckets = sorted(info_["bucket"] for info_ in infos.values())
    if buckets != list(range(info["buckets"])):
        raise InputError(f"shard {shard}: bucket folders {buckets} given, not all {info['buckets']} buckets")
    schema = bucket_schema(vector_type(info["dim"], info["recipe"]["vector_dtype"]))
    # A key a bucket.json lacks has its default (bucket folders outlive runs: `encoder` came later).
    recipe = EmbeddingRecipe(
        **{key: info["recipe"][key] for key in EmbeddingRecipe.__dataclass_fields__ if key in info["recipe"]}
    )
    pieces = [
        _shard_rows(folder, bucket_info, shard, proteins, schema, recipe, store_root)
        for folder, bucket_info in infos.items()
    ]
    vectors = pa.concat_tables(pieces)
    rows = pc.index_in(proteins.column("seq_hash"), value_set=vectors.column("seq_hash"))
    if rows.null_count:
        first = proteins.filter(pc.is_null(rows)).slice(0, 1).to_pylist()[0]
        raise InputError(
            f"shard {shard}: no vector for {rows.null_count} proteins (e.g. genome {first['genome_id']}, protein "
            f"{first['protein_index']}, seq_hash {first['seq_hash']}): bucket outputs are out of date"
        )
    picked = vectors.take(rows)
    table = pa.table([*proteins.columns, picked.column("vector")], schema=shard_schema(schema.field("vector").type))
    metadata = {
        **provenance("embed_gather", {"shard": shard}, ML_PACKAGES),
        RECIPE_KEY: recipe.key,
        RECIPE: json.dumps(info["recipe"], sort_keys=True),
        **lineage(proteins_path, job_identity),
    }
    write_parquet(table, out_path, metadata)
    write_parquet(_genome_qc(proteins, picked), qc_path, metadata)
    for folder in infos:
        (folder / f"shard={shard}.parquet").unlink(missing_ok=True)
    return table.num_rows


def _bucket_info(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / BUCKET_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(
            f"bucket folder {folder}: no readable {BUCKET_INFO} ({error}); rerun its embed_bucket job"
        ) from None


def _shard_rows(
    folder: Path,
    info: dict[str, Any],
    shard: str,
    proteins: pa.Table,
    schema: pa.Schema,
    recipe: EmbeddingRecipe,
    store_root: str | Path,
) -> pa.Table:
    """This shard's rows of one bucket: from the bucket folder, or else looked up in the store."""
    rows = folder / f"shard={shard}.parquet"
    if rows.exists():
        return pq.read_table(rows, schema=schema)
    hashes = pc.unique(proteins.column("seq_hash")).to_pylist()
    mine = pa.array([h for h in hashes if bucket_of(h, info["buckets"]) == info["bucket"]], pa.string())
    log.info("shard %s: bucket %04d wrote no rows for it; reading the store", shard, info["bucket"])
    found = EmbeddingStore(store_root, recipe).lookup(mine, info["bucket"], info["buckets"]) if len(mine) else None
    if found is None:
        return schema.empty_table()
    return (
        found.select(["seq_hash", "vector", "truncated"])
        .append_column("embedded", pa.repeat(False, found.num_rows))
        .cast(schema)
    )


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


def embedding_qc(
    shard_qc_paths: Sequence[str | Path],
    out_path: str | Path,
    vectors_paths: Iterable[str | Path] = (),
    proteins_paths: Sequence[str | Path] | None = None,
    job_identity: str | None = None,
) -> int:
    """Concatenate the shards' per-genome embedding QC; return the number of genomes. Other shards' files
    in the vectors and QC folders are removed (see `remove_stale_shards`). With `proteins_paths` (the shards'
    protein tables, in the same order), each QC shard must be of its protein shard's current rows."""
    shard_qc_paths = list(shard_qc_paths)
    for path in remove_stale_shards([*shard_qc_paths, *vectors_paths]):
        log.info("removed %s: not a shard of this run's plan", path)
    if proteins_paths is not None:
        check_lineage(shard_qc_paths, proteins_paths)
    tables = [pq.read_table(path, schema=QC_SCHEMA) for path in shard_qc_paths]
    qc = pa.concat_tables(tables) if tables else QC_SCHEMA.empty_table()
    recipes = {read_metadata(path).get(RECIPE_KEY) for path in shard_qc_paths} - {None}
    metadata = {**provenance("embed_qc", {"shards": len(tables)}), RECIPE_KEY: ",".join(sorted(recipes))}
    write_parquet(qc, out_path, {**metadata, **lineage(None, job_identity)})
    return qc.num_rows
