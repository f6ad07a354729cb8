#!/usr/bin/env python
"""How planning grows with the cohort: a dry run of ``all`` for 10,000, 100,000 and 1,000,000 genomes.

What it measures
----------------
For each size, a synthetic sample sheet of N genomes (each row names one of three small genomes bundled
with pyrodigal: planning reads the sheet and checks that every file is readable, but opens none) and a
fresh, empty working directory; then, from the repository root,
``snakemake all --dry-run --profile slurm`` with the tiny models (``tiny_model: true``: a hub model id
would need the network), the size's shard size (default 100) and bucket count. Taken for each run:

* wall time of the whole command (Python start-up, parsing, the run plan, the DAG, printing the jobs), and
  its CPU time (user + system), which other work on a shared machine inflates less than the wall time;
* peak resident memory of the command (``wait4``'s ``ru_maxrss``);
* the jobs it plans (Snakemake's job-stats total);
* the run plan alone (``bacflow.plan.make_plan``, i.e. reading and checking the sheet), timed in a
  process of its own, to tell the sheet's share from Snakemake's.

The profile needs snakemake-executor-plugin-slurm but no cluster: a dry run submits nothing. With
``--no-profile`` the dry run uses the local executor (no job groups, no SLURM resources).

Results are kept per ``--label`` in ``bench/results/plan_scale.json`` (so that a run before a change and one
after it sit side by side) and written out as ``bench/results/plan_scale.md``.

How to run
----------
From the repository root (1,000,000 genomes take a few minutes and ~2 GB; the sheet is ~100 MB)::

    .venv/bin/python bench/plan_scale.py --label after
    .venv/bin/python bench/plan_scale.py --label quick --sizes 10000:16 100000:16

Scratch files go to ``bench/work/plan_scale/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

from machine import machine_info, machine_markdown

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "plan_scale"
RESULTS = REPO / "bench" / "results"
SHARD_SIZE = 100  #: the default, unless a size names its own
GENOMES = [
    str(Path(str(files("pyrodigal").joinpath("tests", "data", name))))
    for name in (
        "KK037166.fna.gz",
        "SRR492066.fna.gz",
        "MIIJ01000039.fna.gz",
    )
]


def write_sheet(path: Path, genomes: int) -> None:
    with open(path, "w") as handle:
        handle.write("genome_id\tpath\tgenetic_code\tkind\n")
        handle.writelines(f"g{index:07d}\t{GENOMES[index % len(GENOMES)]}\t11\tdraft\n" for index in range(genomes))


def config_args(sheet: Path, buckets: int, shard_size: int) -> list[str]:
    tiny = WORK / "tiny_models.yaml"
    tiny.write_text("embeddings:\n  tiny_model: true\nbacformer:\n  tiny_model: true\n")
    return [
        *("--configfile", str(REPO / "config" / "config.yaml"), str(tiny)),
        *("--config", f"samples={sheet}", f"shard_size={shard_size}", f"buckets={buckets}"),
    ]


def timed(command: list[str], log: Path) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, exit status) of `command`, its output to `log`."""
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    return time.monotonic() - start, cpu, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def measure(genomes: int, buckets: int, shard_size: int, profile: bool) -> dict:
    sheet = WORK / f"samples_{genomes}.tsv"
    if not sheet.exists():
        write_sheet(sheet, genomes)
    workdir = WORK / f"run_{genomes}_{buckets}_{shard_size}"
    subprocess.run(["rm", "-rf", str(workdir)], check=True)
    workdir.mkdir(parents=True)
    config = config_args(sheet, buckets, shard_size)

    plan_code = (
        "import sys, time, yaml; from snakemake.cli import parse_config; from bacflow.plan import make_plan\n"
        "config = {}\n"
        f"for path in {[config[1], config[2]]!r}: config.update(yaml.safe_load(open(path)) or {{}})\n"
        f"config.update(parse_config({config[4:]!r}))\n"
        "start = time.monotonic(); plan = make_plan(config); print(time.monotonic() - start, len(plan.shards))\n"
    )
    plan_s = float(
        subprocess.run(
            [sys.executable, "-c", plan_code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        ).stdout.split()[0]
    )

    log = WORK / f"dry_run_{genomes}_{buckets}_{shard_size}.log"
    command = [
        *(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")),
        *("--directory", str(workdir), "--cores", "2", "--dry-run", "all"),
        *(["--profile", "slurm"] if profile else []),
        *config,
    ]
    wall, cpu, rss, status = timed(command, log)
    output = log.read_text()
    if status != 0:
        raise SystemExit(f"dry run of {genomes} genomes failed (exit {status}); see {log}:\n{output[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", output, re.MULTILINE)
    row = {
        "genomes": genomes,
        "shard_size": shard_size,
        "buckets": buckets,
        "shards": -(-genomes // shard_size),
        "jobs": int(total.group(1)) if total else None,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "peak_rss_mib": round(rss),
        "plan_s": round(plan_s, 1),
        "profile": "slurm" if profile else "none (local executor)",
        "load_average": [round(value, 1) for value in os.getloadavg()],
    }
    print(json.dumps(row), flush=True)
    return row


def machine() -> dict:
    """bench/machine.py's report (no model runs here: it tells machines apart), with what planning depends on."""
    info = machine_info(seconds=0.5)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        **info,
        "nproc": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "snakemake": version("snakemake"),
        "commit": commit.stdout.strip(),
    }


def bf16_native(info: dict) -> str:
    """The CPU's native bf16, from machine_info's report (runs recorded before it kept only yes or no)."""
    bf16 = info["bf16"]
    return bf16["native"] if isinstance(bf16, dict) else ("yes" if bf16 else "no")


def write_markdown(results: dict) -> None:
    lines = [
        "# Planning at cohort scale",
        "",
        "A dry run of `all` (`snakemake all --dry-run --profile slurm`, tiny models) on a",
        "synthetic sheet of N genomes, from a fresh working directory: wall time and peak resident memory of the",
        "whole command, the jobs it plans, and the run plan alone (`make_plan`: reading and checking the sheet).",
        "Goal (issue 15): planning grows linearly, 1,000,000 genomes in at most 3 minutes and 2 GB.",
        "",
        "Command: `python bench/plan_scale.py` (see its docstring).",
        "",
    ]
    for label, run in results.items():
        info = run["machine"]
        lines += [
            f"## {label}",
            "",
            f"{run['date']}, commit {info['commit']}. {run.get('note', '')}".rstrip(),
            "",
            *([f"Command: `{run['command']}`", ""] if "command" in run else []),
            f"Machine: {info['cpu_model']}, {info['nproc']} CPUs, {info['memory_gib']} GiB, bf16 {bf16_native(info)};"
            f" Python {info['python']}, Snakemake {info['snakemake']}.",
            "",
            # Runs recorded before bench/machine.py existed have only the line above.
            *([machine_markdown(info).rstrip(), ""] if isinstance(info["bf16"], dict) else []),
            "| genomes | shard_size | shards | buckets | jobs | wall s | CPU s | peak RSS MiB | run plan s | load |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        columns = ("genomes", "shard_size", "shards", "buckets", "jobs", "wall_s", "cpu_s", "peak_rss_mib", "plan_s")
        for row in run["rows"]:
            # A run that did not finish keeps a note in its cells instead of numbers.
            cells = [f"{row[key]:,}" if isinstance(row.get(key), int) else str(row.get(key, "-")) for key in columns]
            lines.append(f"| {' | '.join(cells)} | {', '.join(map(str, row['load_average']))} |")
        lines.append("")
    (RESULTS / "plan_scale.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="current", help="the name these numbers are kept under")
    parser.add_argument("--note", default="", help="a sentence printed under the label")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["10000:16", "100000:16", "1000000:64", "1000000:256:500"],
        help=f"GENOMES:BUCKETS or GENOMES:BUCKETS:SHARD_SIZE (default shard size {SHARD_SIZE})",
    )
    parser.add_argument("--no-profile", action="store_true", help="plan without --profile slurm")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        genomes, buckets, shard_size = (int(part) for part in f"{size}:{SHARD_SIZE}".split(":")[:3])
        rows.append(measure(genomes, buckets, shard_size, not args.no_profile))
    # After the dry runs: a child's peak memory counts the parent's pages it was forked with, and measuring the
    # machine loads PyTorch (hundreds of MiB).
    info = machine()
    print(json.dumps(info), flush=True)
    path = RESULTS / "plan_scale.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.label] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "note": args.note,
        "machine": info,
        "command": shlex.join(["python", "bench/plan_scale.py", *sys.argv[1:]]),
        "rows": rows,
    }
    path.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results)


if __name__ == "__main__":
    main()
