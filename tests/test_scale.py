"""Cohort scale: planning a large cohort's DAG is fast and its jobs grow with shards and buckets, never with
genomes. docs/scale.md reports the full-size measurement (a dry run of `all` for 100,000 genomes); this holds
a tenth of it."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import PYRODIGAL_DATA
from workflow_helpers import REPO, planned_jobs, write_sheet

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
