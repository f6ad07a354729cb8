"""Cluster execution: the SLURM profile (`snakemake --profile slurm`) checked without SLURM, then the demo
workflow run through a real one-node SLURM cluster with fake GPUs (tests/slurm_helpers.py).

The cluster tests need root and Debian's slurmctld, slurmd, slurm-client and munge; elsewhere they skip
with the reason. `.ci/run` installs those packages and sets BACFLOW_REQUIRE_SLURM=1, which turns the skip
into a failure, so CI cannot pass without having run them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bacflow.demo import write_demo_sheet
from slurm_helpers import GPU_PARTITION, LocalSlurm, SlurmUnavailable, unavailable
from workflow_helpers import REPO, SNAKEMAKE, snakemake, workflow_rules

PROFILE = yaml.safe_load((REPO / "slurm" / "profile.v9+.yaml").read_text())
GPU_RESOURCES = {"gpu", "gpu_model", "gres", "gpu_manufacturer", "cpus_per_gpu", "tasks_per_gpu"}
# Fewer bucket jobs than the default 16; two still run side by side.
BUCKETS = 2
# The target run through SLURM: both GPU rules (ESM-2 buckets, Bacformer shards) and the CPU rules they
# need, without the clustering and report jobs, which add minutes and no placement case.
CLUSTER_TARGET = "bacformer"
# Bounds the SLURM run (2-3 minutes on a quiet 2-core machine, more beside the other pytest worker); SIGINT
# (not SIGTERM, which snakemake answers by waiting for its jobs) makes it cancel its SLURM jobs, and SIGKILL
# follows 30 s later if it still has not exited.
RUN_TIMEOUT_S = 600


def demo_args(workdir: Path, outdir: str, target: str = "all") -> list[str]:
    """The demo's config and `target`, with results in `outdir`."""
    return [
        target,
        *("--configfile", str(REPO / "config" / "config.yaml"), str(REPO / "config" / "demo.yaml")),
        *("--config", f"samples={workdir / 'samples.tsv'}", f"outdir={outdir}", f"buckets={BUCKETS}"),
    ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm")
    write_demo_sheet(workdir / "samples.tsv")
    return workdir


@pytest.fixture(scope="module")
def rules(demo: Path) -> dict[str, dict]:
    return workflow_rules(demo, f"samples={demo / 'samples.tsv'}")


# --- the profile, without SLURM ---------------------------------------------------------------------


def test_profile_dry_run_needs_no_slurm(demo: Path):
    """`snakemake -n --profile slurm`, typed in the repository root, plans the demo (SLURM is not
    contacted by a dry run, so this holds on any machine)."""
    result = snakemake(demo, "--dry-run", "--profile", "slurm", *demo_args(demo, "dry"))
    assert "Using profile slurm" in result.stdout + result.stderr
    assert re.search(r"^total\s+\d+$", result.stdout, re.MULTILINE), result.stdout


def test_profile_passes_lint(demo: Path):
    result = snakemake(demo, "--lint", "--profile", "slurm", *demo_args(demo, "lint"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_profile_places_every_gpu_rule_and_no_cpu_rule(rules: dict[str, dict]):
    set_resources = PROFILE.get("set-resources") or {}
    unknown = set(set_resources) - set(rules)
    assert not unknown, f"set-resources names rules the workflow does not have: {unknown}"
    for name, rule in rules.items():
        if rule["gpu"]:
            assert set_resources.get(name, {}).get("slurm_partition"), (
                f"rule {name} asks for a GPU: give it a GPU partition in slurm/profile.v9+.yaml set-resources"
            )
        else:
            assert not GPU_RESOURCES & set(set_resources.get(name, {})), f"CPU rule {name} gets GPU resources"
    assert not GPU_RESOURCES & set(PROFILE.get("default-resources", {})), "default-resources would give every job a GPU"


# --- a real SLURM ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    required = os.environ.get("BACFLOW_REQUIRE_SLURM") == "1"
    reason = unavailable()
    if reason is not None:
        (pytest.fail if required else pytest.skip)(reason)
    slurm = LocalSlurm()
    try:
        slurm.start()
    except SlurmUnavailable as error:
        (pytest.fail if required else pytest.skip)(f"SLURM could not be started: {error}")
    yield slurm
    slurm.stop()


@pytest.fixture(scope="module")
def slurm_run(cluster: LocalSlurm, demo: Path):
    """The demo run locally and through `--profile slurm`, with test-only overrides: status polls
    with squeue (the test cluster has no slurmdbd) from 2 s after submission instead of 40 s."""
    # Each run in a folder of its own with the same relative outdir: outputs record the model folders'
    # paths as the rules see them, so only then can the two runs' files be equal byte for byte.
    local_dir, cluster_dir = demo / "local", demo / "cluster"
    local_dir.mkdir()
    cluster_dir.mkdir()
    snakemake(local_dir, *demo_args(demo, "results", CLUSTER_TARGET))
    result = subprocess.run(
        [
            *("timeout", "-s", "INT", "-k", "30", str(RUN_TIMEOUT_S)),
            *SNAKEMAKE,
            *("--directory", str(cluster_dir), "--profile", "slurm"),
            *("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"),
            *demo_args(demo, "results", CLUSTER_TARGET),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,  # where `--profile slurm` is found
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake --profile slurm failed ({result.returncode}):\n{log}"
    return {"log": log, "jobs": cluster.jobs()}


def rules_of(job: dict[str, str], rules: dict[str, dict]) -> set[str]:
    """The rule a SLURM job ran (none of the workflow's are grouped), from the comment the plugin gives it:
    rule_<rule>[_wildcards_<...>]."""
    name = job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]
    return {name} if name in rules else set()


def gpu_request(job: dict[str, str]) -> bool:
    return any("gpu" in value for key, value in job.items() if key.startswith("TresPer"))


def test_jobs_went_through_slurm(slurm_run: dict, rules: dict[str, dict]):
    jobs = slurm_run["jobs"]
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", slurm_run["log"]))
    assert submitted and {job["JobId"] for job in jobs} == submitted, (submitted, jobs)
    for job in jobs:
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["JobName"].startswith(f"{PROFILE['slurm-jobname-prefix']}_"), job
        assert rules_of(job, rules), f"no rule of the workflow matches job {job}"
    # Snakemake announces a job it submits as "rule <name>:", one it runs itself as "localrule <name>:".
    remote = set(re.findall(r"^\s*rule (\w+):", slurm_run["log"], re.MULTILINE))
    seen = set().union(*(rules_of(job, rules) for job in jobs))
    assert remote and seen == remote, f"SLURM ran {seen}, snakemake submitted {remote}"


def test_cpu_rules_ask_for_no_gpu(slurm_run: dict, rules: dict[str, dict]):
    for job in slurm_run["jobs"]:
        if not any(rules[name]["gpu"] for name in rules_of(job, rules)):
            assert not gpu_request(job) and job["Partition"] != GPU_PARTITION, job


def test_gpu_rules_get_a_gpu(slurm_run: dict, rules: dict[str, dict]):
    gpu_jobs = [job for job in slurm_run["jobs"] if any(rules[name]["gpu"] for name in rules_of(job, rules))]
    assert {name for job in gpu_jobs for name in rules_of(job, rules)} == {"embed_bucket", "bacformer_shard"}
    for job in gpu_jobs:
        (name,) = rules_of(job, rules)
        assert gpu_request(job), job
        assert job["Partition"] == PROFILE["set-resources"][name]["slurm_partition"], job


def test_results_equal_a_local_run(slurm_run: dict, demo: Path):
    def results(run: str) -> dict[str, bytes]:
        root = demo / run / "results"
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file() and path.relative_to(root).parts[0] not in ("logs", "benchmarks")
        }

    local, cluster = results("local"), results("cluster")
    assert local and sorted(cluster) == sorted(local)
    assert [name for name in local if cluster[name] != local[name]] == []
