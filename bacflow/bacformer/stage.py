"""The ``bacformer`` stage: contextual protein vectors and genome embeddings, one genome shard per job.

A shard job reads the shard's protein vectors (``embeddings/shards/``, one per protein in genome order) genome
by genome, builds each genome's tokens as the reference does for the model's family (base: CLS, proteins,
separators, END over ESM-2 vectors; Large: the proteins alone over ESM-C vectors; `bacflow.bacformer.inputs`),
and runs the model over **pieces**: a genome that fits is one piece (exactly the reference's input); a longer
one is cut to its first piece (mode ``truncate``, the reference) or covered by overlapping windows (mode
``windowed``, every protein gets the vector of the window where it is farthest from a cut). Pieces of several
genomes share a forward pass, right-padded and key-masked, longest first, under a token budget that counts
padding; with a budget of one piece's length genomes run one at a time (padding cannot change a vector beyond
float rounding, as padded keys are masked).

Outputs per shard: the protein vectors (``bacformer/<model>/proteins/shard=NNNNN/part-0.parquet``) and one
row per genome with QC columns and the genome embedding (``genome_shards/shard=NNNNN.parquet``), which
`bacflow.bacformer.tables.gather_genomes` streams into ``bacformer/<model>/genomes.parquet``. Genomes are
read and written in chunks, so a job holds a bounded number of genomes whatever the shard size.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bacflow.bacformer.constants import MAX_N_CONTIGS, MAX_N_PROTEINS
from bacflow.bacformer.tables import MODEL_KEY, RECIPE_KEYS, genome_schema, protein_schema
from bacflow.core.errors import InputError
from bacflow.core.freshness import check_lineage, lineage
from bacflow.core.provenance import canonical_json, provenance
from bacflow.core.tables import parquet_writer, read_metadata
from bacflow.embeddings.recipe import RECIPE
from bacflow.embeddings.stage import ML_PACKAGES
from bacflow.embeddings.store import vector_array

# PyTorch (and bacflow's modules that import it) is imported inside the functions that run the model: the
# workflow imports BacformerSettings when it plans, which must not pay for loading PyTorch.
if TYPE_CHECKING:
    import torch

    from bacflow.bacformer.inputs import GenomeTokens
    from bacflow.bacformer.modeling_bacformer import BacformerModel
    from bacflow.bacformer.modeling_bacformer_large import BacformerLargeModel

log = logging.getLogger("bacflow")

MODES = ("truncate", "windowed")
GENOME_POOLINGS = ("proteins", "all_positions")
#: Genomes are embedded and written this many proteins at a time (about 80 genomes of 3,300 proteins; 0.5 GB
#: of input vectors and as much output at the published width), so a job's memory does not grow with its shard.
CHUNK_PROTEINS = 1 << 18
_READ_ROWS = 1 << 16


@dataclass(frozen=True)
class BacformerSettings:
    """The ``bacformer:`` config keys that shard jobs use (the model is passed separately)."""

    mode: str = "windowed"
    max_n_proteins: int = MAX_N_PROTEINS
    max_n_contigs: int = MAX_N_CONTIGS
    window_overlap: int = 1000
    sep_token_id: int | str = "auto"
    genome_pooling: str = "proteins"
    dtype: str = "auto"
    vector_dtype: str = "float32"
    gpu_token_budget: int = 48000
    cpu_token_budget: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.genome_pooling not in GENOME_POOLINGS:
            raise InputError(f"bacformer.mode must be one of {MODES} and genome_pooling one of {GENOME_POOLINGS}")
        if self.max_n_proteins < 3:
            raise InputError("bacformer.max_n_proteins must leave room for CLS, one protein and END (at least 3)")
        if self.mode == "windowed" and not 0 <= self.window_overlap < self.max_n_proteins - 2:
            raise InputError(
                f"bacformer.window_overlap ({self.window_overlap}) must be less than max_n_proteins - 2 "
                f"({self.max_n_proteins - 2}), the tokens of a window between its CLS and END"
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BacformerSettings:
        return cls(**{field.name: config[field.name] for field in fields(cls) if field.name in config})


# ------------------------------------------------------------------------------------------ the model run


@dataclass
class GenomePlan:
    """A genome's tokens and the pieces (token spans ``[start, stop)``, between CLS and END where the family
    has them) that cover it."""

    tokens: GenomeTokens
    spans: list[tuple[int, int]]
    owners: np.ndarray  #: per token, the piece whose output it takes; -1: cut by truncation
    protein_positions: np.ndarray  #: token positions of the proteins, in genome order
    special_tokens: bool = True  #: pieces are framed by CLS and END (base), or are the proteins alone (Large)

    @property
    def frame(self) -> int:
        """Tokens a piece has before its body (CLS), and after it (END)."""
        return 1 if self.special_tokens else 0

    @property
    def n_tokens(self) -> int:
        """The whole genome's tokens, as one piece would have them."""
        return len(self.tokens) + 2 * self.frame

    def piece_length(self, index: int) -> int:
        start, stop = self.spans[index]
        return stop - start + 2 * self.frame

    def piece_inputs(self, index: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        from bacflow.bacformer.inputs import large_window_inputs, window_inputs

        build = window_inputs if self.special_tokens else large_window_inputs
        return build(self.tokens, *self.spans[index], dtype=dtype)

    @property
    def mode(self) -> str:
        if len(self.spans) > 1:
            return "windowed"
        return "truncated" if self.spans[0][1] < len(self.tokens) else "whole"


@dataclass
class GenomeResult:
    vectors: np.ndarray  #: (proteins, hidden) float32; rows of cut proteins stay NaN
    embedded: np.ndarray  #: per protein: it has a vector
    embedding: np.ndarray  #: (hidden,) float32


def plan_genome(
    contigs: Sequence[np.ndarray], settings: BacformerSettings, sep_token_id: int, special_tokens: bool = True
) -> GenomePlan:
    """Tokens of a genome given as its contigs' protein vectors, and the pieces that the mode makes;
    `special_tokens`: the family's (`bacflow.bacformer.model_families.ModelFamily.special_tokens`)."""
    from bacflow.bacformer.inputs import SPECIAL_TOKENS, genome_tokens, large_genome_tokens, window_owners, window_spans

    if special_tokens:
        tokens = genome_tokens(contigs, settings.max_n_contigs, sep_token_id)
        body = settings.max_n_proteins - 2  # tokens between a piece's CLS and END
    else:
        tokens = large_genome_tokens(contigs, settings.max_n_contigs)
        body = settings.max_n_proteins
    if settings.mode == "windowed":
        spans = window_spans(len(tokens), body, settings.window_overlap)
    else:
        spans = [(0, min(len(tokens), body))]
    owners = window_owners(len(tokens), spans)
    proteins = np.flatnonzero(tokens.kinds == SPECIAL_TOKENS["PROT_EMB"])
    return GenomePlan(tokens, spans, owners, proteins, special_tokens)


def embed_genomes(
    model: BacformerModel | BacformerLargeModel,
    plans: Sequence[GenomePlan],
    *,
    genome_pooling: str = "proteins",
    token_budget: int = 1,
) -> list[GenomeResult]:
    """Run `model` (eval mode) over every piece of `plans`; one result per plan.

    Pieces run longest first, as many per forward pass as fit `token_budget` padded tokens (at least one).
    On a CUDA out-of-memory error the budget is halved and the batch retried.
    """
    import torch

    from bacflow.bacformer.inputs import collate_inputs

    pieces = [(genome, index) for genome, plan in enumerate(plans) for index in range(len(plan.spans))]
    lengths = np.array([plans[g].piece_length(i) for g, i in pieces], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    dim = model.config.hidden_size
    results = [
        GenomeResult(np.full((n, dim), np.nan, np.float32), np.zeros(n, bool), np.zeros(dim, np.float32))
        for n in (len(plan.protein_positions) for plan in plans)
    ]
    sums = np.zeros((len(plans), dim), np.float64)
    counts = np.zeros(len(plans), np.int64)
    is_causal = bool(getattr(model.config, "is_causal_gm", False))  # run a causal model as it was trained
    device = model.device
    start, started, last_report = 0, time.monotonic(), time.monotonic()
    while start < len(order):
        size = max(1, token_budget // int(lengths[order[start]]))
        batch = [pieces[p] for p in order[start : start + size]]
        inputs = collate_inputs(
            [plans[g].piece_inputs(i, model.dtype) for g, i in batch],
            max_n_contigs=model.config.max_token_type_embeddings,  # the zero row that padding takes
        )
        try:
            with torch.inference_mode():
                hidden = model(
                    **{key: value.to(device) for key, value in inputs.items()}, is_causal=is_causal, return_dict=True
                ).last_hidden_state
            hidden = hidden.float().cpu().numpy()
        except torch.OutOfMemoryError:
            if size == 1:
                raise InputError(
                    f"one piece of {lengths[order[start]]} tokens does not fit in GPU memory: lower "
                    "bacformer.max_n_proteins or use a GPU with more memory"
                ) from None
            token_budget = (size // 2) * int(lengths[order[start]])
            log.warning(
                "out of GPU memory with %d pieces; retrying in halves (budget now %d tokens)", size, token_budget
            )
            torch.cuda.empty_cache()
            continue
        for row, (genome, index) in enumerate(batch):
            _take_outputs(plans[genome], index, hidden[row], results[genome], sums, counts, genome, genome_pooling)
        start += size
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            log.info("%d/%d pieces, %.1f pieces/s", start, len(order), start / (last_report - started))
    for genome, result in enumerate(results):
        if genome_pooling == "proteins":
            result.embedding = result.vectors[result.embedded].astype(np.float64).mean(0).astype(np.float32)
        else:
            result.embedding = (sums[genome] / counts[genome]).astype(np.float32)
    return results


def _take_outputs(
    plan: GenomePlan,
    index: int,
    hidden: np.ndarray,
    result: GenomeResult,
    sums: np.ndarray,
    counts: np.ndarray,
    genome: int,
    genome_pooling: str,
) -> None:
    """Copy the outputs of piece `index` (its row `hidden`, CLS at 0 where the family has one) that the piece
    owns into `result`."""
    start, stop = plan.spans[index]
    frame = plan.frame
    owned = np.flatnonzero(plan.owners[start:stop] == index)  # body tokens, relative to start
    proteins = np.isin(start + owned, plan.protein_positions)
    slots = np.searchsorted(plan.protein_positions, start + owned[proteins])
    result.vectors[slots] = hidden[frame + owned[proteins]]
    result.embedded[slots] = True
    if genome_pooling == "all_positions":
        # The reference's mean over every position: the body tokens once each, the genome's CLS (first
        # piece) and END (last piece); a single piece gives exactly its mean over all positions.
        first, last = frame and index == 0, frame and index == len(plan.spans) - 1
        rows = [frame + owned] + ([[0]] if first else []) + ([[stop - start + 1]] if last else [])
        taken = hidden[np.concatenate(rows)]
        sums[genome] += taken.sum(0, dtype=np.float64)
        counts[genome] += len(taken)


# -------------------------------------------------------------------------------------------- shard files


@dataclass
class ShardGenome:
    genome_id: str
    rows: slice  #: its rows in the shard's protein table
    contig_index: np.ndarray
    vectors: np.ndarray  #: (proteins, dim) float32

    def contigs(self) -> list[np.ndarray]:
        """Protein vectors per contig, contigs that have proteins only, in order (as the reference groups
        proteins by contig, a contig without proteins has no separator)."""
        cuts = np.flatnonzero(np.diff(self.contig_index)) + 1
        return np.split(self.vectors, cuts)


def read_shard_genomes(vectors_path: str | Path) -> Iterator[ShardGenome]:
    """The genomes of an ``embeddings/shards`` file, one at a time, streaming its rows."""
    file = pq.ParquetFile(vectors_path)
    columns = ["genome_id", "contig_index", "protein_index", "vector"]
    missing = set(columns) - set(file.schema_arrow.names)
    if missing:
        raise InputError(f"{vectors_path} lacks columns {sorted(missing)}: not an embeddings shard")
    pending: list[pa.RecordBatch] = []
    offset = 0

    def finish() -> ShardGenome:
        table = pa.Table.from_batches(pending)
        genome = _shard_genome(table, offset, vectors_path)
        pending.clear()
        return genome

    for batch in file.iter_batches(batch_size=_READ_ROWS, columns=columns):
        ids = batch.column(0).to_numpy(zero_copy_only=False)
        cuts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1), len(ids)]
        for first, last in zip(cuts, cuts[1:], strict=False):
            piece = batch.slice(first, last - first)
            if pending and pending[0].column(0)[0].as_py() != ids[first]:
                genome = finish()
                offset = genome.rows.stop
                yield genome
            pending.append(piece)
    if pending:
        yield finish()


def _shard_genome(table: pa.Table, offset: int, path: str | Path) -> ShardGenome:
    genome_id = table.column("genome_id")[0].as_py()
    n = table.num_rows
    protein_index = table.column("protein_index").to_numpy()
    contig_index = table.column("contig_index").to_numpy()
    if not np.array_equal(protein_index, np.arange(n)) or np.any(np.diff(contig_index) < 0):
        raise InputError(
            f"{path}: genome {genome_id} is not one run of rows in genome order (protein_index 0..{n - 1}, "
            "contig_index non-decreasing): not an embeddings shard of this workflow"
        )
    vector = table.column("vector").combine_chunks()
    if vector.null_count:
        raise InputError(f"{path}: genome {genome_id} has proteins without a vector")
    dim = vector.type.list_size
    vectors = vector.flatten().to_numpy(zero_copy_only=False).reshape(n, dim).astype(np.float32, copy=False)
    # Checked here, where the genome and protein can be named: the model would only say its output has a NaN.
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise InputError(
            f"{path}: genome {genome_id} has {len(bad)} protein vectors with NaN or infinite values (first: "
            f"protein_index {bad[0]}): recompute its embeddings"
        )
    return ShardGenome(genome_id, slice(offset, offset + n), contig_index, vectors)


def _chunks(genomes: Iterable[ShardGenome], proteins: int) -> Iterator[list[ShardGenome]]:
    chunk: list[ShardGenome] = []
    size = 0
    for genome in genomes:
        chunk.append(genome)
        size += len(genome.vectors)
        if size >= proteins:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def bacformer_shard(
    vectors_path: str | Path,
    proteins_path: str | Path,
    proteins_out: str | Path,
    genomes_out: str | Path,
    *,
    shard: str,
    model: str,
    revision: str | None,
    name: str,
    settings: BacformerSettings,
    threads: int = 1,
    job_identity: str | None = None,
) -> dict[str, Any]:
    """Embed the genomes of one shard; write its protein vectors and genome rows. Returns counts.

    The vectors must have been gathered from the shard's current proteins (`bacflow.core.freshness`); both
    outputs record those proteins' content id and `job_identity`."""
    import torch

    from bacflow.bacformer.model import FOLDER_FILES, load_bacformer, separator_id
    from bacflow.bacformer.model_families import family_of_config_class
    from bacflow.core.models import choose_device, resolve_model

    check_lineage([vectors_path], [proteins_path])
    torch.set_num_threads(threads)
    device, dtype, dtype_reason = choose_device(settings.dtype)
    source = resolve_model(model, revision, setting="bacformer", files=FOLDER_FILES)
    net = load_bacformer(source.path, device, getattr(torch, dtype))
    family = family_of_config_class(type(net.config).__name__)
    sep_token_id = separator_id(settings.sep_token_id, source.path)
    _check_limits(net, settings, vectors_path, source.label)
    budget = settings.gpu_token_budget if device.type == "cuda" else settings.cpu_token_budget
    identity = {
        "model": source.label,
        "revision": source.revision,
        "local": source.local,
        "name": name,
        "dtype": dtype,
        "sep_token_id": sep_token_id,
        "random_init": bool(getattr(net.config, "bacflow_random_init", False)),
    }
    upstream = read_metadata(vectors_path)
    metadata = {
        **provenance("bacformer_shard", {"shard": shard, **asdict(settings), **identity}, ML_PACKAGES),
        MODEL_KEY: canonical_json(identity),
        **{key: upstream[key] for key in RECIPE_KEYS if key in upstream},
        "bacflow.bacformer_device": f"{device} ({_device_name(device)})",
        "bacflow.bacformer_dtype": f"{dtype} ({dtype_reason})",
        **lineage(proteins_path, job_identity),
    }
    log.info(
        "shard %s: %s (%s) on %s in %s; separator id %d; %s",
        shard,
        source.model,
        source.revision,
        device,
        dtype,
        sep_token_id,
        settings,
    )
    ids = pq.read_table(proteins_path, columns=["genome_id", "protein_index", "protein_id", "contig_id"])
    dim = net.config.hidden_size
    counts = {"genomes": 0, "proteins": 0, "proteins_cut": 0, "whole": 0, "truncated": 0, "windowed": 0}
    with (
        parquet_writer(proteins_out, protein_schema(dim, settings.vector_dtype), metadata) as protein_writer,
        parquet_writer(genomes_out, genome_schema(dim), metadata) as genome_writer,
    ):
        rows_seen = 0
        for chunk in _chunks(read_shard_genomes(vectors_path), CHUNK_PROTEINS):
            plans = [plan_genome(genome.contigs(), settings, sep_token_id, family.special_tokens) for genome in chunk]
            results = embed_genomes(net, plans, genome_pooling=settings.genome_pooling, token_budget=budget)
            for genome, plan, result in zip(chunk, plans, results, strict=False):
                protein_writer.write_table(_protein_rows(genome, result, ids, settings.vector_dtype, proteins_path))
                counts[plan.mode] += 1
                counts["proteins_cut"] += int((~result.embedded).sum())
                if plan.mode != "whole":
                    log.warning(
                        "%s: %d tokens, %s (%d pieces)", genome.genome_id, len(plan.tokens), plan.mode, len(plan.spans)
                    )
            genome_writer.write_table(_genome_rows(chunk, plans, results, dim))
            counts["genomes"] += len(chunk)
            counts["proteins"] += sum(len(genome.vectors) for genome in chunk)
            rows_seen = chunk[-1].rows.stop
            log.info("shard %s: %d genomes, %d proteins done", shard, counts["genomes"], counts["proteins"])
        if rows_seen != ids.num_rows:
            raise InputError(f"{vectors_path} has {rows_seen} proteins, {proteins_path} {ids.num_rows}: out of date")
    if counts["proteins_cut"]:
        log.warning(
            "shard %s: %d proteins of %d truncated genomes have no vector (bacformer.mode: truncate; see proteins_cut)",
            shard,
            counts["proteins_cut"],
            counts["truncated"],
        )
    return counts


def _device_name(device: torch.device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _check_limits(
    net: BacformerModel | BacformerLargeModel, settings: BacformerSettings, vectors_path: str | Path, model: str
) -> None:
    """Refuse settings beyond the model's tables, and vectors of another width or recipe than its family takes."""
    from bacflow.bacformer.model_families import FAMILIES, family_of_config_class

    config = net.config
    family = family_of_config_class(type(config).__name__)
    if family.special_tokens:  # base: a rotary table of 1.5 times the training length; Large computes any length
        positions = int(config.max_position_embeddings * 1.5)
        if settings.max_n_proteins > positions:
            raise InputError(
                f"bacformer.max_n_proteins {settings.max_n_proteins} exceeds the model's {positions} positions"
            )
    if settings.max_n_proteins > config.max_position_embeddings:
        log.warning(
            "bacformer.max_n_proteins %d is beyond the %d tokens the model was trained on",
            settings.max_n_proteins,
            config.max_position_embeddings,
        )
    if settings.max_n_contigs > config.max_token_type_embeddings:
        raise InputError(
            f"bacformer.max_n_contigs {settings.max_n_contigs} exceeds the model's "
            f"{config.max_token_type_embeddings} contig embeddings"
        )
    schema = pq.read_schema(vectors_path)
    if "vector" not in schema.names:
        raise InputError(f"{vectors_path} has no column 'vector': not an embeddings shard")
    takes = (
        f"{model} is a Bacformer {family.name}, which takes {family.encoder} vectors of its hidden size "
        f"{config.hidden_size} (the published ones: {family.embedding_model}, size {family.vector_width})"
    )
    width = schema.field("vector").type.list_size
    if width != config.hidden_size:
        named = [f.name for f in FAMILIES.values() if f.vector_width == width]
        made = f" (the width of Bacformer {named[0]}'s vectors)" if named else ""
        raise InputError(
            f"{vectors_path}: protein vectors of size {width}{made}, but {takes}: the embeddings recipe does not "
            "match the model"
        )
    recipe = json.loads((schema.metadata or {}).get(RECIPE.encode(), b"{}"))
    # Recipes written before ESM-C was supported are ESM-2's and do not name their encoder.
    encoder = recipe.get("encoder", "esm2") if recipe else None
    if encoder is not None and encoder != family.encoder:
        raise InputError(
            f"{vectors_path}: {encoder} protein vectors ({recipe.get('model')}), but {takes}: the embeddings recipe "
            "does not match the model"
        )


def _protein_rows(
    genome: ShardGenome, result: GenomeResult, ids: pa.Table, vector_dtype: str, proteins_path: str | Path
) -> pa.Table:
    rows = ids.slice(genome.rows.start, genome.rows.stop - genome.rows.start)
    if set(rows.column("genome_id").unique().to_pylist()) != {genome.genome_id} or not np.array_equal(
        rows.column("protein_index").to_numpy(), np.arange(len(genome.vectors))
    ):
        raise InputError(
            f"{proteins_path} does not list genome {genome.genome_id}'s proteins where its embeddings shard has "
            "them: out of date"
        )
    keep = np.flatnonzero(result.embedded)
    return pa.table(
        {
            "genome_id": rows.column("genome_id").take(keep),
            "protein_index": rows.column("protein_index").take(keep).cast(pa.int32()),
            "protein_id": rows.column("protein_id").take(keep),
            "contig": rows.column("contig_id").take(keep),
            "contig_index": pa.array(genome.contig_index[keep], pa.int32()),
            "vector": vector_array(result.vectors[keep], vector_dtype),
        }
    )


def _genome_rows(
    chunk: Sequence[ShardGenome], plans: Sequence[GenomePlan], results: Sequence[GenomeResult], dim: int
) -> pa.Table:
    return pa.table(
        {
            "genome_id": [genome.genome_id for genome in chunk],
            "proteins": pa.array([len(genome.vectors) for genome in chunk], pa.int32()),
            "contigs": pa.array([len(np.unique(genome.contig_index)) for genome in chunk], pa.int32()),
            "tokens": pa.array([plan.n_tokens for plan in plans], pa.int32()),
            "mode": [plan.mode for plan in plans],
            "windows": pa.array([len(plan.spans) for plan in plans], pa.int32()),
            "proteins_embedded": pa.array([int(result.embedded.sum()) for result in results], pa.int32()),
            "proteins_cut": pa.array([int((~result.embedded).sum()) for result in results], pa.int32()),
            "embedding": vector_array(np.stack([result.embedding for result in results]), "float32"),
        },
        schema=genome_schema(dim),
    )
