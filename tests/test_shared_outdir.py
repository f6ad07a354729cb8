"""Runs of Bacformer base and Large, and their pretraining runs, in one outdir (the README's two demos): what a job
writes, its log and its benchmark included, belongs to that job, so neither run overwrites the other's or re-runs
the other's jobs. Checked on the workflow's rules as Snakemake parses them for the two configs (no job runs)."""

from __future__ import annotations

import re

import pytest

from conftest import SMALL_GENOME
from workflow_helpers import REPO, workflow_rules, write_sheet

#: The README's base demo and, in the same outdir, its Large demo (with a pretraining run of its own).
CONFIGS = {
    "base": [REPO / "config" / "demo.yaml"],
    "large": [REPO / "config" / "demo.yaml", REPO / "config" / "demo-large.yaml"],
}
OUTDIR = "results"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict]]:
    workdir = tmp_path_factory.mktemp("shared")
    write_sheet(workdir / "samples.tsv", [("g", str(SMALL_GENOME), "11", "mag")])
    config = (f"samples={workdir / 'samples.tsv'}", f"outdir={OUTDIR}")
    return {name: workflow_rules(workdir, *config, configfiles=files) for name, files in CONFIGS.items()}


def own_jobs(runs: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """The rules whose jobs write other outputs in each run (of one encoder, model or pretraining run), by
    "<run> <rule>"."""
    base, large = runs["base"], runs["large"]
    return {
        f"{run} {name}": rules[name]
        for name in base.keys() & large.keys()
        if base[name]["output"] != large[name]["output"]
        for run, rules in runs.items()
    }


def records(rule: dict) -> list[str]:
    return [*rule["log"], *filter(None, [rule["benchmark"]])]


def test_no_log_or_benchmark_is_written_by_two_jobs(runs: dict[str, dict[str, dict]]):
    """A log or benchmark path is another job's only where it is the same job: same rule, same outputs."""
    writers: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
    for rules in runs.values():
        for name, rule in rules.items():
            for path in records(rule):
                writers.setdefault(path, set()).add((name, tuple(rule["output"])))
    shared = {path: sorted(jobs) for path, jobs in writers.items() if len(jobs) > 1}
    assert not shared, "\n".join(f"{path}: {jobs}" for path, jobs in shared.items())


def test_a_job_is_not_rerun_by_the_other_models_run(runs: dict[str, dict[str, dict]]):
    """Snakemake re-runs a job whose input files or params differ from those its outputs were made with: a rule
    whose inputs or params differ between the runs writes other outputs too, or each run re-runs the other's job
    (the report's figures of one model did, after the other model's run)."""
    base, large = runs["base"], runs["large"]
    both = [
        name
        for name in sorted(base.keys() & large.keys())
        if base[name]["output"]
        and base[name]["output"] == large[name]["output"]
        and (base[name]["input"], base[name]["params"]) != (large[name]["input"], large[name]["params"])
    ]
    assert not both, f"rules writing the same outputs from other inputs or params in the two runs: {both}"


def placeholders_as_pattern(documented: str) -> re.Pattern[str]:
    """A documented path with <placeholders> as a pattern of the paths it stands for."""
    return re.compile(
        "".join(r"[^/]+" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]+>)", documented))
    )


def test_the_docs_say_where_each_runs_logs_are(runs: dict[str, dict[str, dict]]):
    """Every `logs/…` folder that README.md and docs/ name is where jobs log; every log of a job of one run (one
    encoder, Bacformer, tiny model or pretraining run) is in such a folder; and a job's benchmark is at its log's
    path under benchmarks/."""
    documented = {path for doc in DOCS for path in re.findall(r"`(logs/[^`\s]+)`", doc.read_text()) if path != "logs/"}
    every_log = {
        path.removeprefix(f"{OUTDIR}/") for rules in runs.values() for rule in rules.values() for path in rule["log"]
    }
    assert documented
    unused = [path for path in documented if not any(placeholders_as_pattern(path).match(log) for log in every_log)]
    assert not unused, f"documented log folders where no job logs: {unused}"
    undocumented = [
        f"{job}: {log}"
        for job, rule in own_jobs(runs).items()
        for log in rule["log"]
        if not any(placeholders_as_pattern(path).match(log.removeprefix(f"{OUTDIR}/")) for path in documented)
    ]
    assert not undocumented, "logs in folders the docs do not name:\n" + "\n".join(undocumented)
    for rules in runs.values():
        for name, rule in rules.items():
            expected = [re.sub(r"\.log$", ".tsv", log.replace("/logs/", "/benchmarks/", 1)) for log in rule["log"]]
            assert rule["benchmark"] in (None, *expected), name
