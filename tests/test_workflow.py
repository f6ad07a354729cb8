"""End-to-end runs of the Snakemake workflow on real genomes: outputs, reruns, sharding, strict mode."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from bacflow.core.tables import read_metadata
from conftest import PYRODIGAL_DATA, SHARED_DATA, needs_shared
from workflow_helpers import REPO, planned_jobs, snakemake, write_sheet


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A sheet of real genomes of every input kind, plus one empty file that must be quarantined."""
    workdir = tmp_path_factory.mktemp("cohort")
    empty = workdir / "empty.fna.gz"
    with gzip.open(empty, "wb"):
        pass
    rows = [
        ("Mgenitalium", str(SHARED_DATA / "genomes/Mgenitalium_G37_L43967.2.fna.gz"), "4", "complete"),
        ("Ct_D_gbff", str(SHARED_DATA / "genomes/Ctrachomatis_D-CS637-11_GCF_001183765.1.gbff.gz"), "11", "complete"),
        ("Ct_114V1", str(SHARED_DATA / "drafts/Ctrachomatis_114V1_GCF_003788785.1.fna.gz"), "11", "draft"),
        ("SRR492066", str(PYRODIGAL_DATA / "SRR492066.fna.gz"), "11", "mag"),
        ("empty", str(empty), "11", "draft"),
    ]
    write_sheet(workdir / "samples.tsv", rows)
    return workdir


def cohort_config(workdir: Path, outdir: str = "results", *extra: str) -> list[str]:
    return ["--config", f"samples={workdir / 'samples.tsv'}", f"outdir={outdir}", "shard_size=2", *extra]


@needs_shared
def test_proteins_target_end_to_end(cohort: Path):
    result = snakemake(cohort, "proteins", *cohort_config(cohort))
    assert "5 genomes" in result.stdout and "1 quarantined" in result.stdout, result.stdout

    results = cohort / "results"
    proteins = ds.dataset(results / "proteins", format="parquet", partitioning="hive").to_table()
    qc = pq.read_table(results / "qc/genomes.parquet").to_pandas().set_index("genome_id")
    assert sorted(path.name for path in (results / "proteins").iterdir()) == [
        "shard=00000",
        "shard=00001",
        "shard=00002",
    ]

    counts = proteins.to_pandas().groupby("genome_id").size()
    assert counts.to_dict() == qc.loc[qc.proteins > 0, "proteins"].to_dict()
    assert qc.loc["Ct_D_gbff", "proteins"] == 914 and qc.loc["Ct_D_gbff", "pseudogenes_dropped"] == 15
    assert qc.loc["Ct_D_gbff", "mode"] == "file" and qc.loc["Mgenitalium", "mode"] == "single"
    assert qc.loc["SRR492066", "mode"] == "meta"
    assert qc.loc["Ct_114V1", "contigs"] == 3
    assert "empty" in qc.loc["empty", "quarantine_reason"] and qc.loc["empty", "proteins"] == 0

    metadata = read_metadata(results / "proteins/shard=00000/part-0.parquet")
    assert {"bacflow.config_hash", "bacflow.params", "bacflow.tool_versions"} <= metadata.keys()
    assert "pyrodigal" in metadata["bacflow.tool_versions"]
    for rule_output in ("proteins/00000", "qc_genomes"):
        assert (results / "logs" / f"{rule_output}.log").exists()
        assert (results / "benchmarks" / f"{rule_output}.tsv").exists()

    # A rerun has nothing to do.
    assert "Nothing to be done" in snakemake(cohort, "proteins", "--dry-run", *cohort_config(cohort)).stdout

    # Losing one shard's output re-runs that shard alone, with identical results.
    lost = results / "proteins/shard=00001/part-0.parquet"
    before = pq.read_table(lost)
    kept = results / "proteins/shard=00000/part-0.parquet"
    kept_mtime = kept.stat().st_mtime_ns
    lost.unlink()
    assert planned_jobs(cohort, "proteins", *cohort_config(cohort)).get("proteins_shard") == 1
    snakemake(cohort, "proteins", *cohort_config(cohort))
    assert pq.read_table(lost).equals(before)
    assert kept.stat().st_mtime_ns == kept_mtime


@needs_shared
def test_appending_genomes_reruns_only_changed_shards(cohort: Path, tmp_path: Path):
    snakemake(cohort, "proteins", *cohort_config(cohort))
    sheet = tmp_path / "samples.tsv"
    lines = (cohort / "samples.tsv").read_text().splitlines()
    extra = f"Bfloridanus\t{SHARED_DATA / 'genomes/Bfloridanus_GCF_000043285.1.fna.gz'}\t11\tcomplete"
    sheet.write_text("\n".join(lines + [extra]) + "\n")
    # shards 00000 and 00001 keep their members; 00002 gains the new genome.
    jobs = planned_jobs(cohort, "proteins", "--config", f"samples={sheet}", "outdir=results", "shard_size=2")
    assert jobs.get("proteins_shard") == 1


@needs_shared
def test_strict_mode_fails_on_quarantine(cohort: Path):
    result = snakemake(cohort, "proteins", *cohort_config(cohort, "strict", "strict=True"), check=False)
    assert result.returncode != 0
    # The job's one message, without a traceback.
    (message,) = [line for line in result.stderr.splitlines() if line.startswith("bacflow: strict: ")]
    assert "empty" in message and "Traceback" not in result.stderr
    assert not (cohort / "strict/proteins/shard=00002").exists()


def test_bad_sheet_fails_before_any_job(tmp_path: Path):
    write_sheet(tmp_path / "samples.tsv", [("ok", str(PYRODIGAL_DATA / "KK037166.fna.gz"), "11", "plasmid")])
    result = snakemake(tmp_path, "proteins", "--config", f"samples={tmp_path / 'samples.tsv'}", check=False)
    assert result.returncode != 0
    assert "line 2 (genome_id 'ok'), column 'kind'" in result.stderr
    assert not (tmp_path / "results").exists()


def test_bad_config_is_rejected(tmp_path: Path):
    write_sheet(tmp_path / "samples.tsv", [("ok", str(PYRODIGAL_DATA / "KK037166.fna.gz"), "11", "draft")])
    result = snakemake(
        tmp_path, "proteins", "--config", f"samples={tmp_path / 'samples.tsv'}", "shard_size=0", check=False
    )
    assert result.returncode != 0 and "shard_size" in result.stderr


@pytest.mark.parametrize(
    ("setting", "message", "allowed"),
    [
        pytest.param("stirct=true", "config key 'stirct' is unknown", "did you mean 'strict'", id="top-level"),
        pytest.param(
            "families={vocab_siz: 5}", "config key 'families.vocab_siz' is unknown", "vocab_size", id="nested"
        ),
    ],
)
def test_an_unknown_config_key_is_one_line(tmp_path: Path, setting: str, message: str, allowed: str):
    """The key, where it is and what is allowed, without a dump of the schema."""
    write_sheet(tmp_path / "samples.tsv", [("ok", str(PYRODIGAL_DATA / "KK037166.fna.gz"), "11", "draft")])
    result = snakemake(
        tmp_path, "proteins", "--dry-run", "--config", f"samples={tmp_path / 'samples.tsv'}", setting, check=False
    )
    # A dry run logs to stdout.
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0
    (line,) = [line for line in output if message in line]
    assert allowed in line, line
    # Snakemake's own lines around it: where the check is (file and line), and nothing more.
    assert len(output) <= 3, "\n".join(output)


@pytest.mark.parametrize(
    ("target", "settings", "message"),
    [
        pytest.param(
            "bacformer",
            ("embeddings={{tiny_model: false, model: {esm2}}}", "bacformer={{tiny_model: large}}"),
            "bacflow: the tiny Bacformer Large (bacformer.tiny_model: large) takes ESM-C vectors",
            id="input-function",
        ),
        pytest.param(
            "pretrain",
            ("embeddings={{tiny_model: true}}", "bacformer={{tiny_model: true}}", "pretrain={{family: large}}"),
            "bacflow: the Bacformer Large that pretraining trains (pretrain.family large) takes ESM-C vectors",
            id="params",
        ),
        pytest.param("proteins", ("outdir={esm2}/config.json",), "is a file, not a folder", id="config"),
    ],
)
def test_a_refusal_when_planned_is_one_line(tmp_path: Path, target: str, settings: tuple[str, ...], message: str):
    """Whether the plan refuses the config at once or a rule's input function or params find it out (a model worked
    out when a job needs it): the message alone, no traceback of the rule file that asked."""
    write_sheet(tmp_path / "samples.tsv", [("ok", str(PYRODIGAL_DATA / "KK037166.fna.gz"), "11", "draft")])
    esm2 = tmp_path / "esm2"  # a local ESM-2: its family is read from config.json, without the hub
    esm2.mkdir()
    (esm2 / "config.json").write_text('{"model_type": "esm", "hidden_size": 480}')
    config = [f"samples={tmp_path / 'samples.tsv'}", *(setting.format(esm2=esm2) for setting in settings)]
    result = snakemake(tmp_path, target, "--dry-run", "--config", *config, check=False)
    output = (result.stdout + result.stderr).splitlines()
    assert result.returncode != 0
    assert len([line for line in output if message in line]) == 1, "\n".join(output)
    assert not [line for line in output if "Traceback" in line or 'File "' in line], "\n".join(output)


def test_config_values_on_the_command_line_are_read_as_yaml(tmp_path: Path):
    """`--config` hands `true` and nested values over as text; they mean what they mean in a config file."""
    write_sheet(tmp_path / "samples.tsv", [("ok", str(PYRODIGAL_DATA / "KK037166.fna.gz"), "11", "draft")])
    settings = ("strict=true", "families={vocab_size: 5, min_seq_id: 0.4}", "gene_calling={mask: false}")
    snakemake(tmp_path, "proteins", "--dry-run", "--config", f"samples={tmp_path / 'samples.tsv'}", *settings)


def test_lint_and_format_are_clean(tmp_path: Path):
    write_sheet(tmp_path / "samples.tsv", [("ok", str(PYRODIGAL_DATA / "KK037166.fna.gz"), "11", "draft")])
    lint = snakemake(tmp_path, "--lint", "--config", f"samples={tmp_path / 'samples.tsv'}", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", str(REPO)], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
