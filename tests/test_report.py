"""The report's figures and QC page (bacflow.report) on small hand-made tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bacflow import report
from bacflow.bacformer_tables import MODEL_KEY, genome_schema
from bacflow.esm_recipe import RECIPE
from bacflow.embedding_store import vector_array

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


def test_the_front_page_names_the_models_recorded_in_the_genome_table(tmp_path: Path):
    genomes = write_genomes(tmp_path / "g.parquet", {"g": "whole"})
    recipe = {"model": "local:esm2-tiny", "revision": "sha256:f86b3c65", "local": True, "dtype": "float32"}
    model = {"model": "macwiatrak/bacformer-masked-MAG", "revision": "c0ffee", "local": False, "random_init": False}
    table = pq.read_table(genomes)
    pq.write_table(table.replace_schema_metadata({RECIPE: json.dumps(recipe), MODEL_KEY: json.dumps(model)}), genomes)
    assert report.models_that_ran(genomes) == {
        "esm2": "local:esm2-tiny, sha256:f86b3c65",
        "bacformer": "macwiatrak/bacformer-masked-MAG, commit c0ffee",
    }
    random = {**model, "model": "local:bacformer-tiny", "revision": "sha256:9394", "local": True, "random_init": True}
    pq.write_table(table.replace_schema_metadata({MODEL_KEY: json.dumps(random)}), genomes)
    names = report.models_that_ran(genomes)
    assert names["bacformer"] == "local:bacformer-tiny, sha256:9394, randomly initialised: no biological meaning"
    assert names["esm2"].startswith("unknown")  # a table without the recipe's metadata
    assert all(name.startswith("unknown") for name in report.models_that_ran(tmp_path / "missing.parquet").values())
