"""Figures and tables of the workflow's HTML report (``snakemake --report report.html``).

Each function reads finished tables and writes one file that the report shows: proteins per genome, QC
flags, the protein-family size distribution, and a 2-D projection of the Bacformer genome embeddings.
Large tables are streamed: family sizes are counted per size, and the projection (PCA) is computed from
running sums of the embeddings, so memory does not grow with the cohort beyond a few numbers per genome.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bacflow.bacformer.tables import MODEL_KEY
from bacflow.core.tables import read_metadata
from bacflow.embeddings.recipe import ENCODER_NAMES, RECIPE

#: Genomes listed one by one in a bar chart (more get a histogram) and in the QC table (more are counted).
MAX_BARS = 40
MAX_TABLE_ROWS = 500
#: Groups given their own colour in the projection; the rest are drawn grey.
MAX_GROUPS = 10
_BATCH_ROWS = 1 << 14


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


#: What the report says of a tiny randomly initialised model (`bacflow.embeddings.tiny`, `bacflow.bacformer.model`).
RANDOM = "a tiny randomly initialised model: its vectors carry no biological meaning"


def models_that_ran(outdir: str | Path) -> list[str]:
    """How the report's front page names the models that made the results in `outdir` (not the configured ones:
    the demo runs tiny models): one line of reStructuredText per Bacformer results folder (every model that ran in
    this outdir, base or Large), from the metadata of its genome table. Read when the workflow loads, so folders
    without a genome table yet are left out."""
    return [
        f"``{path.parent.relative_to(outdir)}/``: {_rst_text(made_by(path))}"
        for path in sorted(Path(outdir).glob("bacformer/*/genomes.parquet"))
    ]


def made_by(genomes_path: str | Path) -> str:
    """The Bacformer model and the protein encoder that made a Bacformer genome table, as its metadata records them
    (the model, and what identifies its weights), saying which are tiny random models; "unknown" where the table
    is unreadable or silent."""
    try:
        metadata = read_metadata(genomes_path)
    except (OSError, pa.ArrowException):
        metadata = {}
    bacformer, recipe = (json.loads(metadata[key]) if key in metadata else None for key in (MODEL_KEY, RECIPE))
    # Recipes written before ESM-C was supported are ESM-2's and do not name their encoder.
    encoder = ENCODER_NAMES[recipe.get("encoder", "esm2")] if recipe else "unknown"
    return (
        f"Bacformer {_model_name(bacformer)}, on {encoder} protein embeddings from {_model_name(recipe)}"
        if bacformer or recipe
        else f"unknown models (no {MODEL_KEY} or {RECIPE} in {genomes_path})"
    )


def _model_name(identity: dict[str, Any] | None) -> str:
    """The model, and what identifies its weights (a hub commit, or a local folder's checksum); whether they are
    random."""
    if identity is None:
        return "unknown"
    weights = f"{'' if identity['local'] else 'commit '}{identity['revision']}"
    return (
        f"{identity['model']} ({weights}; {RANDOM})"
        if identity.get("random_init")
        else f"{identity['model']} ({weights})"
    )


def _rst_text(text: str) -> str:
    """`text` as plain reStructuredText: characters that would start markup escaped (names may hold `_` or `*`)."""
    return re.sub(r"([\\`*_|])", r"\\\1", text)


def _with_bacformer(qc: pa.Table, genomes_path: str | Path, columns: Sequence[str]) -> pa.Table:
    """`qc` (rows of qc/genomes.parquet) with `columns` of the Bacformer genome table beside, in `qc`'s order.

    Quarantined genomes have no Bacformer row: their columns are null. Arrow columns take a few bytes per
    genome, so this stays small for cohorts of millions of genomes."""
    bacformer = pq.read_table(genomes_path, columns=["genome_id", *columns])
    rows = pc.index_in(qc.column("genome_id"), value_set=bacformer.column("genome_id"))  # null: no row
    beside = bacformer.select(list(columns)).take(rows)
    for name in columns:
        qc = qc.append_column(name, beside.column(name))
    return qc


def proteins_per_genome(qc_path: str | Path, genomes_path: str | Path, out_path: str | Path, limit: int) -> None:
    """Proteins of each genome (bars for a few genomes, a histogram for many), marking those that Bacformer
    had to window or truncate and the model's limit (`limit` tokens)."""
    table = _with_bacformer(pq.read_table(qc_path, columns=["genome_id", "proteins"]), genomes_path, ["mode"])
    counts = table.column("proteins").to_numpy().astype(float)
    long = pc.fill_null(pc.not_equal(table.column("mode"), "whole"), False).to_numpy(zero_copy_only=False)
    ids = table.column("genome_id").to_pylist() if table.num_rows <= MAX_BARS else []
    plt = _pyplot()
    if table.num_rows <= MAX_BARS:
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(ids)))
        ax.barh(ids, counts, color=np.where(long, "tab:orange", "tab:blue"))
        ax.invert_yaxis()
        ax.set_xlabel("proteins")
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        bins = np.linspace(0, max(counts.max(initial=1), limit) * 1.05, 60)
        ax.hist([counts[~long], counts[long]], bins=bins, stacked=True, color=["tab:blue", "tab:orange"])
        ax.set_xlabel("proteins")
        ax.set_ylabel("genomes")
    ax.axvline(limit, color="grey", linestyle="--", linewidth=1)
    ax.text(limit, 0.02, f" {limit} tokens ", transform=ax.get_xaxis_transform(), color="grey", fontsize=8, ha="right")
    ax.set_title(
        f"Proteins per genome, {table.num_rows:,} genomes (orange: windowed or truncated by Bacformer)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def _positive_values(values: pa.ChunkedArray) -> pa.ChunkedArray:
    # Nulls count as 0: no flag is null, since pc.or_ would make the genome's combined flag null.
    return pc.greater(pc.fill_null(values, 0), 0)


def _positive(column: str) -> Callable[[pa.Table], pa.ChunkedArray]:
    return lambda table: _positive_values(table[column])


def _mode_is(mode: str) -> Callable[[pa.Table], pa.ChunkedArray]:
    return lambda table: pc.fill_null(pc.equal(table["mode"], mode), False)


#: QC flags: (label, test of the joined qc/genomes.parquet and Bacformer genome table, true per flagged genome).
_FLAGS: tuple[tuple[str, Callable[[pa.Table], pa.ChunkedArray]], ...] = (
    ("quarantined", lambda table: pc.greater(pc.utf8_length(pc.fill_null(table["quarantine_reason"], "")), 0)),
    ("gene-calling or reading warnings", lambda table: _positive_values(pc.list_value_length(table["warnings"]))),
    ("proteins longer than the protein encoder sees (1,022 residues)", _positive("proteins_over_1022")),
    ("proteins beyond the published Bacformer's 6,000", _positive("proteins_beyond_6000")),
    ("contigs beyond the published Bacformer's 1,000", _positive("contigs_beyond_1000")),
    ("Bacformer: windowed", _mode_is("windowed")),
    ("Bacformer: truncated", _mode_is("truncated")),
    ("Bacformer: proteins without a vector (truncation)", _positive("proteins_cut")),
)
_QC_COLUMNS = (
    "genome_id",
    "group",
    "proteins",
    "quarantine_reason",
    "warnings",
    "proteins_over_1022",
    "proteins_beyond_6000",
    "contigs_beyond_1000",
)
_BACFORMER_COLUMNS = ("mode", "windows", "proteins_cut")


def qc_flags(qc_path: str | Path, genomes_path: str | Path, out_path: str | Path) -> None:
    """An HTML page: how many genomes raise each QC flag, then the flagged genomes (the first
    `MAX_TABLE_ROWS`, in sheet order) with their flags.

    The flags are computed on Arrow columns (a few bytes per genome); only the listed rows become Python
    objects, so a cohort of a million genomes costs tens of megabytes."""
    table = _with_bacformer(pq.read_table(qc_path, columns=list(_QC_COLUMNS)), genomes_path, _BACFORMER_COLUMNS)
    flags = [(label, test(table).combine_chunks()) for label, test in _FLAGS]
    summary = [[label, f"{pc.sum(flag).as_py() or 0:,}"] for label, flag in flags]
    any_flag = functools.reduce(pc.or_, (flag for _, flag in flags))
    flagged = pc.indices_nonzero(any_flag)
    shown = flagged[:MAX_TABLE_ROWS]
    listed = [
        [
            row["genome_id"],
            row["group"],
            f"{row['proteins']:,}",
            "; ".join(label for label, flag in flags if flag[index].as_py()),
            row["quarantine_reason"] or "; ".join(row["warnings"] or []),
        ]
        for index, row in zip(shown.to_pylist(), table.take(shown).to_pylist(), strict=False)
    ]
    more = (
        f"<p>… and {len(flagged) - MAX_TABLE_ROWS:,} more: see the QC tables.</p>"
        if len(flagged) > MAX_TABLE_ROWS
        else ""
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>QC flags</title><style>"
        "body{font-family:sans-serif;font-size:14px} table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>"
        f"<h3>QC flags of {table.num_rows:,} genomes ({len(flagged):,} flagged)</h3>"
        + _html_table(["flag", "genomes"], summary)
        + (
            "<h3>Flagged genomes</h3>"
            + _html_table(["genome", "group", "proteins", "flags", "reason or warnings"], listed)
            if listed
            else "<p>No genome raises a flag.</p>"
        )
        + more
        + "</body></html>\n"
    )
    Path(out_path).write_text(page)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def family_sizes(families_path: str | Path, out_path: str | Path) -> None:
    """How many families have each size (proteins of the cohort), log-log, vocabulary families apart.

    A labelled family is counted once by its id; an unlabelled one by the row of its representative."""
    labelled: dict[int, int] = {}
    unlabelled: Counter[int] = Counter()
    file = pq.ParquetFile(families_path)
    for batch in file.iter_batches(_BATCH_ROWS, columns=["seq_hash", "representative", "family_id", "family_size"]):
        family = batch.column("family_id")
        has_id = pc.is_valid(family)
        labelled.update(
            zip(family.filter(has_id).to_pylist(), batch.column("family_size").filter(has_id).to_pylist(), strict=False)
        )
        own = pc.and_(pc.invert(has_id), pc.equal(batch.column("seq_hash"), batch.column("representative")))
        unlabelled.update(batch.column("family_size").filter(pc.fill_null(own, False)).to_pylist())
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sizes, label, colour in (
        (Counter(labelled.values()), f"in the vocabulary ({len(labelled):,})", "tab:blue"),
        (unlabelled, f"unlabelled ({sum(unlabelled.values()):,})", "tab:grey"),
    ):
        if sizes:
            x = np.array(sorted(sizes))
            ax.scatter(x, [sizes[size] for size in x], s=10, label=label, color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    # Sizes within two decades get labelled minor ticks too (2, 3, 5, ...); wider ranges only their decades.
    largest = max([*labelled.values(), *unlabelled, 1])
    ax.xaxis.set_minor_formatter(plain if largest < 100 else NullFormatter())
    ax.set_xlabel("family size (proteins in the cohort)")
    ax.set_ylabel("families")
    ax.set_title("Protein-family sizes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def _embeddings(path: str | Path) -> Iterator[tuple[list[str], np.ndarray]]:
    file = pq.ParquetFile(path)
    for batch in file.iter_batches(_BATCH_ROWS, columns=["genome_id", "embedding"]):
        vectors = batch.column(1)
        dim = vectors.type.list_size
        yield batch.column(0).to_pylist(), vectors.flatten().to_numpy().reshape(-1, dim).astype(np.float64)


def pca(path: str | Path, components: int = 2) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(genome ids, coordinates (n, components), explained variance ratios) of the genome embeddings of a
    Bacformer genome table, in two streaming passes (sums and the covariance, then the projection)."""
    n, total, outer = 0, None, None
    for _, x in _embeddings(path):
        n += len(x)
        total = x.sum(0) if total is None else total + x.sum(0)
        outer = x.T @ x if outer is None else outer + x.T @ x
    if not n:
        return [], np.zeros((0, components)), np.zeros(components)
    mean = total / n
    covariance = (outer - n * np.outer(mean, mean)) / max(n - 1, 1)
    values, vectors = np.linalg.eigh(covariance)
    top = np.argsort(values)[::-1][:components]
    # Directions without variance (n genomes span at most n - 1) are rounding noise: project them to 0.
    noise = values[top] <= 1e-9 * max(values.max(), 1e-300)
    # Eigenvectors' signs are arbitrary: fix them (largest loading positive) so reruns draw the same picture.
    basis = vectors[:, top] * np.sign(vectors[np.abs(vectors[:, top]).argmax(0), top])
    ratio = np.clip(values[top], 0, None) / max(values.clip(0).sum(), 1e-300)
    basis[:, noise] = 0
    ids, coordinates = [], []
    for batch_ids, x in _embeddings(path):
        ids += batch_ids
        coordinates.append((x - mean) @ basis)
    return ids, np.concatenate(coordinates), ratio


def genome_projection(genomes_path: str | Path, qc_path: str | Path, out_path: str | Path) -> None:
    """The genome embeddings projected on their first two principal components, coloured by `group`."""
    ids, xy, ratio = pca(genomes_path)
    groups_of = dict(zip(*pq.read_table(qc_path, columns=["genome_id", "group"]).to_pydict().values(), strict=False))
    groups = [groups_of.get(genome) or genome for genome in ids]
    by_size = [group for group, _ in Counter(groups).most_common()]
    shown = by_size[:MAX_GROUPS]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    colours = plt.get_cmap("tab10")
    rest = np.array([group not in shown for group in groups], dtype=bool)
    if rest.any():
        ax.scatter(xy[rest, 0], xy[rest, 1], s=12, color="lightgrey", label=f"{len(by_size) - len(shown)} other groups")
    for index, group in enumerate(shown):
        mine = np.array([g == group for g in groups], dtype=bool)
        ax.scatter(xy[mine, 0], xy[mine, 1], s=18, color=colours(index), label=str(group))
    if len(xy) <= MAX_BARS:
        for genome, (x, y) in zip(ids, xy, strict=False):
            ax.annotate(genome, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of the variance)" if len(ratio) else "PC1")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2")
    ax.set_title(f"Bacformer genome embeddings, {len(ids):,} genomes\n{made_by(genomes_path)}", fontsize=10, wrap=True)
    ax.legend(title="group", fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
