"""The report's figures and QC page (bacflow.report) on small hand-made tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bacflow import report
from bacflow.bacformer.tables import MODEL_KEY, genome_schema
from bacflow.embeddings.recipe import RECIPE
from bacflow.embeddings.store import vector_array
from workflow_helpers import REPO

DIM = 6


def write_qc(path: Path, rows: list[dict]) -> Path:
    defaults = {
        "group": None,
        "proteins": 10,
        "quarantine_reason": None,
        "warnings": [],
        "proteins_over_1022": 0,
        "proteins_beyond_6000": 0,
        "contigs_beyond_1000": 0,
    }
    table = pa.Table.from_pylist(
        [{**defaults, **row} for row in rows],
        schema=pa.schema(
            [
                ("genome_id", pa.string()),
                ("group", pa.string()),
                ("proteins", pa.int32()),
                ("quarantine_reason", pa.string()),
                ("warnings", pa.list_(pa.string())),
                ("proteins_over_1022", pa.int32()),
                ("proteins_beyond_6000", pa.int32()),
                ("contigs_beyond_1000", pa.int32()),
            ]
        ),
    )
    pq.write_table(table, path)
    return path


def write_genomes(path: Path, modes: dict[str, str], embeddings: np.ndarray | None = None) -> Path:
    n = len(modes)
    embeddings = np.random.default_rng(0).normal(size=(n, DIM)) if embeddings is None else embeddings
    table = pa.table(
        {
            "genome_id": list(modes),
            "proteins": pa.array([10] * n, pa.int32()),
            "contigs": pa.array([1] * n, pa.int32()),
            "tokens": pa.array([13] * n, pa.int32()),
            "mode": list(modes.values()),
            "windows": pa.array([2 if mode == "windowed" else 1 for mode in modes.values()], pa.int32()),
            "proteins_embedded": pa.array([10] * n, pa.int32()),
            "proteins_cut": pa.array([3 if mode == "truncated" else 0 for mode in modes.values()], pa.int32()),
            "embedding": vector_array(embeddings.astype(np.float32), "float32"),
        },
        schema=genome_schema(DIM),
    )
    pq.write_table(table, path)
    return path


def test_qc_flags_counts_each_flag_and_lists_flagged_genomes_in_sheet_order(tmp_path: Path):
    qc = write_qc(
        tmp_path / "qc.parquet",
        [
            {"genome_id": "fine", "group": "x"},
            {"genome_id": "long", "proteins_beyond_6000": 40},
            {"genome_id": "bad", "proteins": 0, "quarantine_reason": "no genes", "warnings": ["empty contig"]},
            {"genome_id": "cut"},
            {"genome_id": "noisy", "warnings": ["odd <header>"]},
        ],
    )
    modes = {"cut": "truncated", "fine": "whole", "noisy": "whole", "long": "windowed"}  # not in sheet order
    genomes = write_genomes(tmp_path / "g.parquet", modes)
    out = tmp_path / "flags.html"
    report.qc_flags(qc, genomes, out)
    page = out.read_text()
    assert "QC flags of 5 genomes (4 flagged)" in page
    for label, count in (
        ("quarantined", 1),
        ("gene-calling or reading warnings", 2),
        ("proteins beyond the published Bacformer&#x27;s 6,000", 1),
        ("Bacformer: windowed", 1),
        ("Bacformer: truncated", 1),
        ("Bacformer: proteins without a vector (truncation)", 1),
        ("contigs beyond the published Bacformer&#x27;s 1,000", 0),
    ):
        assert f"<td>{label}</td><td>{count}</td>" in page
    listed = page.split("Flagged genomes")[1]
    assert [listed.index(f"<td>{genome}</td>") for genome in ("long", "bad", "cut", "noisy")] == sorted(
        listed.index(f"<td>{genome}</td>") for genome in ("long", "bad", "cut", "noisy")
    )
    assert "<td>fine</td>" not in listed and "odd &lt;header&gt;" in listed  # escaped


def test_qc_flags_lists_at_most_max_rows(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(report, "MAX_TABLE_ROWS", 2)
    qc = write_qc(tmp_path / "qc.parquet", [{"genome_id": f"g{i}", "warnings": ["w"]} for i in range(5)])
    genomes = write_genomes(tmp_path / "g.parquet", {f"g{i}": "whole" for i in range(5)})
    report.qc_flags(qc, genomes, tmp_path / "flags.html")
    page = (tmp_path / "flags.html").read_text()
    assert "<td>g1</td>" in page and "<td>g2</td>" not in page and "… and 3 more" in page


@pytest.mark.parametrize("bars", [True, False])
def test_proteins_per_genome_draws_bars_or_a_histogram(tmp_path: Path, monkeypatch, bars: bool):
    monkeypatch.setattr(report, "MAX_BARS", 10 if bars else 2)
    qc = write_qc(tmp_path / "qc.parquet", [{"genome_id": f"g{i}", "proteins": 100 * i} for i in range(4)])
    genomes = write_genomes(tmp_path / "g.parquet", {"g3": "windowed", "g1": "whole", "g2": "whole"})
    out = tmp_path / "proteins.png"
    report.proteins_per_genome(qc, genomes, out, limit=250)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_streaming_pca_matches_numpy_and_the_projection_is_drawn(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(report, "_BATCH_ROWS", 3)  # several batches per pass
    rng = np.random.default_rng(1)
    x = rng.normal(size=(11, DIM)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    genomes = write_genomes(tmp_path / "g.parquet", {f"g{i}": "whole" for i in range(11)}, x)
    ids, xy, ratio = report.pca(genomes)
    x = x.astype(np.float32).astype(np.float64)
    centred = x - x.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    assert ids == [f"g{i}" for i in range(11)]
    assert np.allclose(np.abs(xy), np.abs(expected), atol=1e-6)
    assert np.allclose(ratio, singular[:2] ** 2 / (singular**2).sum())
    qc = write_qc(tmp_path / "qc.parquet", [{"genome_id": f"g{i}", "group": "ab"[i % 2]} for i in range(11)])
    report.genome_projection(genomes, qc, tmp_path / "projection.png")
    assert (tmp_path / "projection.png").read_bytes().startswith(b"\x89PNG")


def write_results(outdir: Path, name: str, recipe: dict | None, model: dict | None) -> Path:
    """bacformer/<name>/genomes.parquet of `outdir`, with the recipe of its input vectors and its model as metadata."""
    path = outdir / "bacformer" / name / "genomes.parquet"
    path.parent.mkdir(parents=True)
    table = pq.read_table(write_genomes(path, {"g": "whole"}))
    metadata = {key: json.dumps(value) for key, value in ((RECIPE, recipe), (MODEL_KEY, model)) if value is not None}
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def front_page(outdir: Path) -> str:
    """report/workflow.rst as `snakemake --report` renders it (Jinja, then docutils), as text, for a config whose
    models_that_ran is `outdir`'s."""
    import jinja2
    from docutils.core import publish_parts

    class Snakemake:
        config = {"samples": "samples.tsv", "outdir": str(outdir), "models_that_ran": report.models_that_ran(outdir)}

    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    text = template.from_string((REPO / "report" / "workflow.rst").read_text()).render(snakemake=Snakemake)
    html = publish_parts(text, writer="html", settings_overrides={"report_level": 2})["html_body"]
    assert "system-message" not in html, html  # docutils found no markup errors
    return re.sub(r"<[^>]+>", "", html)


TINY = {"local": True, "revision": "sha256:f86b3c65", "dtype": "float32", "random_init": True}
HUB_BACFORMER = {"model": "macwiatrak/bacformer-masked-MAG", "revision": "c0ffee", "local": False, "random_init": False}
HUB_ESM2 = {"model": "facebook/esm2_t12_35M_UR50D", "revision": "e1e1", "local": False, "dtype": "float32"}


def test_the_front_page_names_each_model_in_the_outdir_with_its_encoder_and_says_which_are_random(tmp_path: Path):
    outdir = tmp_path / "results"
    write_results(
        outdir, "tiny-random", {**TINY, "model": "local:esm2-tiny"}, {**TINY, "model": "local:bacformer-base-tiny"}
    )
    write_results(
        outdir,
        "tiny-random-large",
        {**TINY, "model": "local:esmc-tiny", "encoder": "esmc"},
        {**TINY, "model": "local:bacformer-large-tiny"},
    )
    write_results(outdir, "macwiatrak--bacformer-masked-MAG", HUB_ESM2, HUB_BACFORMER)
    write_results(outdir, "silent", None, None)  # a table without the metadata
    page = front_page(outdir)
    names = ("tiny-random", "tiny-random-large", "macwiatrak--bacformer-masked-MAG", "silent")
    items = [re.findall(rf"bacformer/{name}/:[^\n]*", page) for name in names]
    assert all(len(item) == 1 for item in items), page  # one line per results folder
    base, large, hub, silent = (item[0] for item in items)
    assert "ESM-2 protein embeddings" not in page.split("bacformer/")[0]  # the opening names no one encoder
    assert "Bacformer local:bacformer-base-tiny" in base and "ESM-2 protein embeddings from local:esm2-tiny" in base
    assert "Bacformer local:bacformer-large-tiny" in large and "ESM-C protein embeddings from local:esmc-tiny" in large
    assert "ESM-2" not in large
    random = "a tiny randomly initialised model: its vectors carry no biological meaning"
    assert base.count(random) == large.count(random) == 2  # the encoder's and the Bacformer's
    assert (
        "Bacformer macwiatrak/bacformer-masked-MAG (commit c0ffee)" in hub and "esm2_t12_35M_UR50D (commit e1e1)" in hub
    )
    assert "random" not in hub
    assert "unknown models" in silent
    assert "no Bacformer results yet" in front_page(tmp_path / "empty")
