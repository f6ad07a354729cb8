"""Cohort scale: planning a large cohort's DAG is fast, its jobs grow with shards and buckets, never with
genomes, and its edges with shards + buckets, never their product. bench/plan_scale.py measures the full
sizes (dry runs of `all` for up to 1,000,000 genomes); the timed test here holds 10,000."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from conftest import PYRODIGAL_DATA
from workflow_helpers import REPO, planned_jobs, snakemake, write_sheet

GENOMES, SHARD_SIZE, BUCKETS = 10_000, 100, 16
# A tenth of the genomes in a tenth of the 2 minutes that 100,000 may take (they take ~30 s on a 2-core
# machine; 10,000 take ~5 s).
BUDGET_S = 12
# Rules that run once per cohort (gathers, clustering, targets) are at most this many jobs each.
PER_COHORT = 10


def test_cohort_dry_run_schedules_shards_and_buckets_not_genomes(tmp_path: Path):
    # A few real files, each named by many rows: planning reads the sheet and stats every file.
    files = [PYRODIGAL_DATA / name for name in ("KK037166.fna.gz", "SRR492066.fna.gz", "MIIJ01000039.fna.gz")]
    rows = [(f"g{index:06d}", str(files[index % len(files)]), "11", "draft") for index in range(GENOMES)]
    write_sheet(tmp_path / "samples.tsv", rows)

    # The tiny models: planning resolves a hub model id, which needs the network (or the HF cache).
    tiny = tmp_path / "tiny_models.yaml"
    tiny.write_text("embeddings:\n  tiny_model: true\nbacformer:\n  tiny_model: true\n")

    start = time.monotonic()
    jobs = planned_jobs(
        tmp_path,
        *("all", "--profile", "slurm", "--configfile", str(REPO / "config" / "config.yaml"), str(tiny)),
        *("--config", f"samples={tmp_path / 'samples.tsv'}"),
        *(f"shard_size={SHARD_SIZE}", f"buckets={BUCKETS}"),
    )
    elapsed = time.monotonic() - start

    shards = GENOMES // SHARD_SIZE
    total = jobs.pop("total")
    assert total == sum(jobs.values()) and jobs.get("proteins_shard") == shards, jobs
    scaling = {rule: count for rule, count in jobs.items() if count > PER_COHORT}
    assert set(scaling.values()) <= {shards, BUCKETS}, f"rules whose jobs grow with neither: {scaling}"
    assert elapsed < BUDGET_S, f"planning {GENOMES} genomes took {elapsed:.1f} s"


def dag_edges(workdir: Path, shards: int, buckets: int) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The jobs (id -> rule) and dependencies (job, job it feeds) of `all` for `shards` one-genome shards."""
    rows = [(f"g{index:03d}", str(PYRODIGAL_DATA / "SRR492066.fna.gz"), "11", "draft") for index in range(shards)]
    write_sheet(workdir / "samples.tsv", rows)
    (workdir / "tiny_models.yaml").write_text("embeddings:\n  tiny_model: true\nbacformer:\n  tiny_model: true\n")
    dot = snakemake(
        workdir,
        *("--configfile", str(REPO / "config" / "config.yaml"), str(workdir / "tiny_models.yaml")),
        *("--config", f"samples={workdir / 'samples.tsv'}", "shard_size=1", f"buckets={buckets}"),
        *("--dag", "dot", "--", "all"),
    ).stdout
    jobs = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)', dot, re.MULTILINE))
    return jobs, re.findall(r"^\s*(\d+) -> (\d+)$", dot, re.MULTILINE)


def test_the_dag_grows_with_shards_plus_buckets_not_their_product(tmp_path: Path):
    """Every bucket job needs every shard and every gather every bucket: through one manifest each, so no
    job's dependencies grow with the other axis (buckets x shards edges made a million genomes plan for
    13 minutes; bench/plan_scale.py)."""
    sizes = {(8, 2): tmp_path / "small", (16, 4): tmp_path / "large"}
    in_degrees, edges = {}, {}
    for (shards, buckets), workdir in sizes.items():
        workdir.mkdir()
        jobs, dependencies = dag_edges(workdir, shards, buckets)
        assert Counter(jobs.values())["embed_gather"] == shards and Counter(jobs.values())["embed_bucket"] == buckets
        degree = Counter(target for _, target in dependencies)
        in_degrees[shards] = {
            rule: max(degree[job] for job, name in jobs.items() if name == rule)
            for rule, count in Counter(jobs.values()).items()
            if count > 1
        }
        edges[shards] = len(dependencies)
    # A job per shard or per bucket has as many dependencies in a cohort twice the size, in both axes...
    assert in_degrees[16] == in_degrees[8], in_degrees
    assert in_degrees[8]["embed_bucket"] <= 3 and in_degrees[8]["embed_gather"] <= 3, in_degrees
    # ...so the edges (a*shards + b*buckets + c) at most double; with a buckets x shards term they would
    # more than double.
    assert edges[16] <= 2 * edges[8], edges
