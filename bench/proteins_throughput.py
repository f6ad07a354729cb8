#!/usr/bin/env python
"""Throughput of bacflow's ``proteins`` stage against pyrodigal called directly, in genomes per second.

What it measures
----------------
The same set of real FASTA genomes (default: 12 from ``../shared/data``, 0.6-5.7 Mbp, complete and
draft, one with genetic code 4; no GenBank, so every path does gene calling) goes through:

* ``baseline``: the reference method, in this process: a minimal gzip/FASTA reader,
  ``pyrodigal.GeneFinder(meta=False, mask=True)``, ``train(*contigs, translation_table=code)``,
  ``find_genes`` per contig and ``translate(include_stop=False)`` per gene. The same gene calling work
  as bacflow's, without its tables, hashing, QC and I/O.
* ``baseline_threads2``: the baseline over a pool of 2 threads (one genome per task). Compared with
  ``baseline`` it tells whether pyrodigal releases the GIL, i.e. whether threads scale at all.
* ``library_threads1`` / ``library_threads2``: ``bacflow.proteins.annotate.annotate_shard(samples, params,
  threads=1|2)`` on the whole set: reading, gene calling, protein rows, hashes, QC and the Arrow tables.
* ``snakemake_cores1`` / ``snakemake_cores2``: the whole ``proteins`` target of the workflow in a fresh
  folder (``snakemake --cores 1|2 --set-threads proteins_shard=1``, ``shard_size`` such that the set
  is 2 shards, so that 2 jobs run side by side with 2 cores): Snakemake start-up and DAG, one Python
  process per job, parquet writing, and the QC gather job.
* ``snakemake_cores2_jobthreads2``: as above with the configured ``threads.proteins`` (2): one job at a
  time, each on 2 threads.
* ``snakemake_dryrun``: ``snakemake -n proteins`` in a fresh folder: Snakemake's own start-up and DAG.

Every variant runs ``--repeats`` times (default 3), interleaved (the order rotates each repeat) after
one unmeasured warm-up pass; the report gives the median (and min/max) wall time, genomes/s, and the
ratio of each variant's time to the baseline's with the same parallelism (1.00 = no overhead; the target
is <= 1.10). Before timing, the warm-up checks that the baseline's proteins and bacflow's are the same
sequences in the same order (and, with Snakemake, that the workflow's parquet equals the library's
table), so both sides do the same work. A cProfile of bacflow's per-genome path and a breakdown of the
Snakemake runs (job times from the rules' ``benchmark:`` files and log time stamps) show where the
overhead goes.

How to run
----------
From the repository root, in the README's environment (about 5 minutes on 2 cores)::

    .venv/bin/python bench/proteins_throughput.py
    .venv/bin/python bench/proteins_throughput.py --repeats 5 --data /path/to/shared/data
    .venv/bin/python bench/proteins_throughput.py --no-snakemake --no-profile   # library path only
    .venv/bin/python bench/proteins_throughput.py --limit 4 --shard-size 2 --repeats 1 --output /tmp/t.md  # smoke test

Results go to ``bench/results/proteins_throughput.md`` (markdown tables plus the full JSON) and
``bench/results/proteins_throughput.json``; the code copy and scratch runs go to ``bench/work/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gzip
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyrodigal
from machine import machine_info, machine_markdown  # bench/, this script's folder: the checkout stays off the path

REPO = Path(__file__).resolve().parents[1]
#: What the workflow needs to run; copied at start so that edits made to the checkout while the
#: benchmark runs change neither the code measured nor the code imported here.
SNAPSHOT_PATHS = ("Snakefile", "rules", "scripts", "config", "bacflow", "envs")
#: Where the Snakefile and the bacflow package measured are (the snapshot, or the checkout itself).
CODE = REPO


def load_bacflow(root: Path) -> None:
    """Import bacflow from `root` and make its names global here."""
    global CODE, PROTEIN_SCHEMA, AnnotationParams, annotate_genome, annotate_shard, Sample
    CODE = root
    sys.path.insert(0, str(root))
    from bacflow.core.samples import Sample
    from bacflow.proteins.annotate import PROTEIN_SCHEMA, AnnotationParams, annotate_genome, annotate_shard

    if not Path(sys.modules["bacflow"].__file__).is_relative_to(root):
        raise SystemExit(f"bacflow was imported from {sys.modules['bacflow'].__file__}, not from {root}")


def snapshot(destination: Path) -> Path:
    """Copy the workflow's code from the checkout to `destination`."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for name in SNAPSHOT_PATHS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, destination / name)
    return destination


# (genome_id, path under the data folder, genetic code, kind). Two halves of about 19 Mbp each, so
# that with shard_size 6 the two Snakemake shards carry about the same work; largest first in each.
GENOMES = [
    ("Ecoli_Sakai", "genomes/Ecoli_O157H7_Sakai_GCF_000008865.2.fna.gz", 11, "complete"),
    ("Ecoli_K12", "genomes/Ecoli_K12_MG1655_ragout.fna.gz", 11, "complete"),
    ("Ecasseliflavus_EC20", "genomes/Ecasseliflavus_EC20_NC_020995.1.fna.gz", 11, "complete"),
    ("Saureus_NCTC8325", "genomes/Saureus_NCTC8325_NC_007795.1.fna.gz", 11, "complete"),
    ("Hpylori_SJM180", "cohort/Hpylori_SJM180_NC_014560.1.fna.gz", 11, "complete"),
    ("Bfloridanus", "genomes/Bfloridanus_GCF_000043285.1.fna.gz", 11, "complete"),
    ("Kpneumoniae_HS11286", "genomes/Kpneumoniae_HS11286_GCA_000240185.2.fna.gz", 11, "complete"),
    ("Ecoli_K12_contigs", "drafts/Ecoli_K12_MG1655_ragout_contigs.fna.gz", 11, "draft"),
    ("Bsubtilis_168", "genomes/Bsubtilis_168_GCF_000009045.1.fna.gz", 11, "complete"),
    ("Efaecalis_TX0104", "drafts/Efaecalis_TX0104_scaffolds.fna.gz", 11, "draft"),
    ("Ctrachomatis_D", "genomes/Ctrachomatis_D-CS637-11_GCF_001183765.1.fna.gz", 11, "complete"),
    ("Mgenitalium_G37", "genomes/Mgenitalium_G37_L43967.2.fna.gz", 4, "complete"),
]

#: Which baseline each variant is compared with (same parallelism).
REFERENCE = {
    "baseline": "baseline",
    "baseline_threads2": "baseline",
    "library_threads1": "baseline",
    "library_threads2": "baseline_threads2",
    "snakemake_cores1": "baseline",
    "snakemake_cores2": "baseline_threads2",
    "snakemake_cores2_jobthreads2": "baseline_threads2",
}


# --------------------------------------------------------------------------------------------------
# The baseline: pyrodigal called directly


def read_fasta_minimal(path: str) -> list[str]:
    """Contig sequences of a (possibly gzipped) nucleotide FASTA file, upper case."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    records = raw.decode().split(">")[1:]
    return ["".join(record.partition("\n")[2].split()).upper() for record in records]


def baseline_genome(path: str, genetic_code: int) -> list[str]:
    contigs = read_fasta_minimal(path)
    finder = pyrodigal.GeneFinder(meta=False, mask=True)
    finder.train(*contigs, translation_table=genetic_code)
    return [gene.translate(include_stop=False) for contig in contigs for gene in finder.find_genes(contig)]


def run_baseline(samples: list[Sample], threads: int) -> list[list[str]]:
    if threads == 1:
        return [baseline_genome(s.path, s.genetic_code) for s in samples]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda s: baseline_genome(s.path, s.genetic_code), samples))


# --------------------------------------------------------------------------------------------------
# The workflow


def snakemake_command(workdir: Path, cores: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(CODE / "Snakefile"),
        "--configfile",
        str(CODE / "config" / "config.yaml"),
        "--directory",
        str(workdir),
        "--cores",
        str(cores),
        *extra,
    ]


def run_snakemake(root: Path, name: str, sheet: Path, shard_size: int, cores: int, *extra: str) -> dict:
    """Run the proteins target in a fresh folder; wall time and a breakdown of where it went."""
    workdir = root / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    command = snakemake_command(
        workdir,
        cores,
        "proteins",
        *extra,
        "--config",
        f"samples={sheet}",
        "outdir=results",
        f"shard_size={shard_size}",
    )
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (workdir / "snakemake.out").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{name}: snakemake failed, see {workdir / 'snakemake.out'}\n{result.stderr[-3000:]}")
    out = workdir / "results"
    jobs = {}
    for tsv in sorted((out / "benchmarks" / "proteins").glob("*.tsv")):
        shard = tsv.stem
        jobs[f"proteins_shard {shard}"] = {
            "job_s": _benchmark_seconds(tsv),
            "in_script_s": _log_span(out / "logs" / "proteins" / f"{shard}.log"),
        }
    jobs["qc_genomes"] = {"job_s": _benchmark_seconds(out / "benchmarks" / "qc_genomes.tsv")}
    return {"seconds": wall, "jobs": jobs, "command": command}


def run_dryrun(root: Path, sheet: Path, shard_size: int) -> dict:
    workdir = root / "snakemake_dryrun"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    command = snakemake_command(
        workdir, 1, "-n", "proteins", "--config", f"samples={sheet}", "outdir=results", f"shard_size={shard_size}"
    )
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True)
    return {"seconds": time.perf_counter() - start}


def _benchmark_seconds(path: Path) -> float:
    header, values = path.read_text().splitlines()[:2]
    return float(dict(zip(header.split("\t"), values.split("\t"), strict=False))["s"])


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.MULTILINE)


def _log_span(path: Path) -> float | None:
    """Seconds between the first and last log record of a job: bacflow's own work (annotate + write)."""
    stamps = [datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in _STAMP.findall(path.read_text())]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) >= 2 else None


# --------------------------------------------------------------------------------------------------
# Measuring on a shared machine

_TICK = os.sysconf("SC_CLK_TCK")


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all CPUs) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of all its finished (waited-for) descendants."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(function) -> tuple[object, dict]:
    """Run `function`; its wall time, our CPU time, and the average CPUs used meanwhile by other processes."""
    busy, own, start = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
    result = function()
    wall = time.perf_counter() - start
    own = _own_cpu_seconds() - own
    foreign = max(0.0, _busy_cpu_seconds() - busy - own)
    return result, {"wall_s": wall, "cpu_s": own, "foreign_cpus": foreign / wall}


def wait_for_quiet(limit_s: float, threshold: float = 0.1, window_s: float = 1.0) -> float:
    """Wait (up to `limit_s`) until other processes use under `threshold` CPUs over `window_s`."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        busy, own = _busy_cpu_seconds(), _own_cpu_seconds()
        time.sleep(window_s)
        if (_busy_cpu_seconds() - busy - (_own_cpu_seconds() - own)) / window_s < threshold:
            break
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# Checks, profile, environment


def check_same_work(samples: list[Sample], baseline: list[list[str]], proteins: pa.Table) -> None:
    """The baseline and bacflow must produce the same proteins, genome by genome, in the same order."""
    ids = proteins.column("genome_id").to_pylist()
    sequences = proteins.column("sequence").to_pylist()
    by_genome: dict[str, list[str]] = {}
    for genome_id, sequence in zip(ids, sequences, strict=False):
        by_genome.setdefault(genome_id, []).append(sequence)
    for sample, expected in zip(samples, baseline, strict=False):
        got = by_genome.get(sample.genome_id, [])
        if got != expected:
            raise SystemExit(
                f"{sample.genome_id}: bacflow gives {len(got)} proteins, the baseline {len(expected)}; "
                "they must do the same work"
            )


def check_workflow_table(workdir: Path, library: pa.Table) -> None:
    """The workflow's proteins parquet (all shards) must equal the library's table, row for row."""
    table = ds.dataset(workdir / "results" / "proteins", format="parquet", partitioning="hive").to_table()
    table = table.select(PROTEIN_SCHEMA.names).cast(PROTEIN_SCHEMA)
    order = {gid: i for i, gid in enumerate(dict.fromkeys(library.column("genome_id").to_pylist()))}
    keys = sorted(
        range(table.num_rows), key=lambda i: (order[table["genome_id"][i].as_py()], table["protein_index"][i].as_py())
    )
    if not table.take(keys).replace_schema_metadata(None).equals(library.replace_schema_metadata(None)):
        raise SystemExit(f"the workflow's proteins in {workdir} differ from annotate_shard's table")


def profile_library(samples: list[Sample], params: AnnotationParams, top: int) -> dict:
    """cProfile of bacflow's per-genome path, serially (threads hide work from cProfile)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for sample in samples:
        annotate_genome(sample, params)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in stats.stats.items():
        where = function if filename == "~" else f"{Path(filename).name}:{line}({function})"
        rows.append({"function": where, "calls": calls, "tottime_s": tottime, "cumtime_s": cumtime})
    rows.sort(key=lambda row: row["tottime_s"], reverse=True)
    return {"total_s": total, "top_tottime": rows[:top]}


def machine() -> dict:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    versions = {"python": platform.python_version()}
    for package in ("bacflow", "pyrodigal", "pyarrow", "biopython", "snakemake"):
        try:
            versions[package] = version(package)
        except Exception:  # noqa: BLE001
            versions[package] = "not installed"
    git = {}
    try:
        git["commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        git["uncommitted_changes"] = subprocess.run(
            ["git", "-C", str(REPO), "diff", "--name-only", "HEAD"], capture_output=True, text=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        **machine_info(),
        "nproc": nproc,
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
        "git": git,
    }


# --------------------------------------------------------------------------------------------------
# Report


def summarise(
    times: dict[str, list[float]],
    cpu: dict[str, list[float]],
    foreign: dict[str, list[float]],
    n_genomes: int,
    bases: int,
    proteins: int,
) -> dict:
    summary = {}
    for name, values in times.items():
        median = statistics.median(values)
        summary[name] = {
            "parallelism": statistics.median(c / w for c, w in zip(cpu[name], values, strict=False)),
            "foreign_cpus_median": statistics.median(foreign[name]),
            "median_s": median,
            "cpu_median_s": statistics.median(cpu[name]),
            "min_s": min(values),
            "max_s": max(values),
            "repeats_s": values,
            "genomes_per_s": n_genomes / median,
            "mbp_per_s": bases / 1e6 / median,
            "proteins_per_s": proteins / median,
        }
    for name, row in summary.items():
        reference = REFERENCE.get(name)
        if reference in summary:
            row["reference"] = reference
            row["ratio_to_reference"] = row["median_s"] / summary[reference]["median_s"]
        if "baseline" in summary:
            row["ratio_to_baseline_1"] = row["median_s"] / summary["baseline"]["median_s"]
            row["cpu_ratio_to_baseline"] = row["cpu_median_s"] / summary["baseline"]["cpu_median_s"]
    return summary


def scaling(summary: dict) -> dict:
    pairs = {
        "baseline (pyrodigal alone, threads)": ("baseline", "baseline_threads2"),
        "library annotate_shard threads": ("library_threads1", "library_threads2"),
        "snakemake --cores, 2 jobs x 1 thread": ("snakemake_cores1", "snakemake_cores2"),
        "snakemake --cores, 1 job x 2 threads": ("snakemake_cores1", "snakemake_cores2_jobthreads2"),
    }
    return {
        label: summary[one]["median_s"] / summary[two]["median_s"]
        for label, (one, two) in pairs.items()
        if one in summary and two in summary
    }


def markdown(report: dict) -> str:
    m, s = report["machine"], report["summary"]
    lines = [
        "# proteins stage throughput: bacflow vs pyrodigal alone",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: nproc {m['nproc']}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}",
        machine_markdown(m).rstrip("\n"),
        f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- code measured: {report['code']}",
        f"- bacflow commit: {m['git'].get('commit', '?')}"
        + (
            f" (uncommitted changes in: {', '.join(m['git']['uncommitted_changes'])})"
            if m["git"].get("uncommitted_changes")
            else ""
        ),
        f"- genomes: {report['genomes']['count']} FASTA genomes, {report['genomes']['mbp']:.1f} Mbp, "
        f"{report['genomes']['contigs']} contigs, {report['genomes']['proteins']} proteins (all single mode); "
        f"Snakemake shard_size {report['shard_size']} ({report['genomes']['shards']} shards)",
        f"- {report['repeats']} repeats per variant, interleaved (order rotated per repeat) after a warm-up; "
        "median shown. Ratio = time / time of the baseline with the same parallelism (1.00 = no overhead).",
        f"- same work: {report['checks']}",
        "",
        "| variant | wall s (median) | min–max s | genomes/s | Mbp/s | wall ratio vs reference "
        "| wall ratio vs baseline | CPU s (median) | CPU ratio vs baseline | CPUs busy (CPU/wall) "
        "| other processes (CPUs) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in s.items():
        ratio = f"{row['ratio_to_reference']:.3f} (vs {row['reference']})" if "ratio_to_reference" in row else ""
        lines.append(
            f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f}–{row['max_s']:.2f} | "
            f"{row['genomes_per_s']:.3f} | {row['mbp_per_s']:.2f} | {ratio} | "
            f"{row.get('ratio_to_baseline_1', 0):.3f} | "
            f"{row['cpu_median_s']:.2f} | {row.get('cpu_ratio_to_baseline', 0):.3f} | {row['parallelism']:.2f} | "
            f"{row['foreign_cpus_median']:.2f} |"
        )
    lines += [
        "",
        "CPU s: CPU time of this process and its children (Snakemake and its jobs) during the run; the CPU ratio "
        "counts extra work whatever the parallelism and is hardly affected by other processes on the machine. "
        "CPUs busy: CPU s / wall s of the same runs; above 1 only if threads (or processes) really ran at the "
        "same time, so above 1 for a threaded run means the GIL was released. Other processes: the median "
        "average CPUs the rest of the machine used meanwhile (from /proc/stat); wall times are only "
        "trustworthy where this is near 0.",
    ]
    if report["scaling"]:
        lines += ["", "Scaling from 1 to 2 (time at 1 / time at 2; 2.00 is perfect):", ""]
        lines += [f"- {label}: {value:.2f}x" for label, value in report["scaling"].items()]
    if report.get("snakemake_breakdown"):
        lines += [
            "",
            "Where the Snakemake runs' time goes (medians over repeats; job = the rule's `benchmark:` wall "
            "time, in-script = first to last log record of the job, i.e. bacflow's annotate + parquet write):",
            "",
            "| variant | total s | proteins jobs (sum) s | in-script (sum) s | job start-up (sum) s | qc_genomes s "
            "| outside jobs s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in report["snakemake_breakdown"].items():
            lines.append(
                f"| {name} | {row['total_s']:.2f} | {row['proteins_jobs_s']:.2f} | {row['in_script_s']:.2f} | "
                f"{row['job_startup_s']:.2f} | {row['qc_genomes_s']:.2f} | {row['outside_jobs_s']:.2f} |"
            )
        if "snakemake_dryrun" in s:
            lines.append(f"\n`snakemake -n proteins` (start-up + DAG only): {s['snakemake_dryrun']['median_s']:.2f} s.")
    if report.get("fixed_costs"):
        f = report["fixed_costs"]
        lines += [
            "",
            f"Fixed costs (CPU, from the medians): the workflow adds {f['workflow_extra_cpu_s']:.2f} CPU s to "
            f"{report['genomes']['count']} genomes' gene calling "
            f"({f['baseline_cpu_s_per_genome']:.2f} CPU s per genome "
            f"here): about {f['per_run_cpu_s']:.2f} s per run (Snakemake start-up + DAG, QC gather) and "
            f"{f['per_job_cpu_s']:.2f} s per shard job (interpreter, imports, script set-up, parquet). Estimated CPU "
            "ratio to the baseline, once per-run costs are amortised, by shard size: "
            + ", ".join(f"{k}: {v:.3f}" for k, v in f["estimated_cpu_ratio"].items())
            + ".",
        ]
    if report.get("profile"):
        p = report["profile"]
        lines += [
            "",
            f"cProfile of bacflow's per-genome path (annotate_genome, serial, {p['total_s']:.2f} s under the "
            "profiler; pyrodigal's C code is counted in `call_genes`):",
            "",
            "| function | calls | tottime s | cumtime s |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{r['function']}` | {r['calls']} | {r['tottime_s']:.3f} | {r['cumtime_s']:.3f} |"
            for r in p["top_tottime"]
        ]
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
    lines += ["", "## JSON", "", "```json", json.dumps(report, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def fixed_costs(summary: dict, n_genomes: int, shards: int) -> dict:
    """The workflow's extra CPU split into a per-run and a per-shard part, and what it is at scale.

    Per run: Snakemake's start-up and DAG (the dry run) plus the ``qc_genomes`` job, taken as one more job
    start-up. Per shard: the rest of the extra CPU over the baseline, divided by the shards (a Python
    process with its imports, the script's set-up, parquet writing). A shard of S genomes then costs
    ``S * work + per_shard`` and the ratio for S genomes per shard is ``1 + per_shard / (S * work)``.
    """
    base = summary["baseline"]["cpu_median_s"]
    extra = summary["snakemake_cores1"]["cpu_median_s"] - base
    run = summary["snakemake_dryrun"]["cpu_median_s"]
    per_shard = max(0.0, (extra - run) / (shards + 1))  # +1: the qc_genomes job
    per_genome = base / n_genomes
    return {
        "baseline_cpu_s_per_genome": per_genome,
        "workflow_extra_cpu_s": extra,
        "per_run_cpu_s": run + per_shard,
        "per_job_cpu_s": per_shard,
        "estimated_cpu_ratio": {
            f"{size} genomes per shard": 1 + per_shard / (size * per_genome) for size in (6, 25, 100, 1000)
        },
    }


def snakemake_breakdown(runs: dict[str, list[dict]]) -> dict:
    breakdown = {}
    for name, repeats in runs.items():
        rows = []
        for run in repeats:
            shards = [job for key, job in run["jobs"].items() if key.startswith("proteins_shard")]
            jobs_s = sum(job["job_s"] for job in shards)
            in_script = sum(job["in_script_s"] or 0.0 for job in shards)
            qc = run["jobs"]["qc_genomes"]["job_s"]
            rows.append(
                {
                    "total_s": run["seconds"],
                    "proteins_jobs_s": jobs_s,
                    "in_script_s": in_script,
                    "job_startup_s": jobs_s - in_script,
                    "qc_genomes_s": qc,
                    # wall time not covered by any job (start-up, DAG, scheduling); jobs may overlap at 2 cores
                    "outside_jobs_s": run["seconds"] - run["jobs_span_s"],
                }
            )
        breakdown[name] = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    return breakdown


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data", help="folder of the shared test genomes"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (median reported; >= 3)")
    parser.add_argument("--shard-size", type=int, default=6, help="genomes per Snakemake shard (default 6: 2 shards)")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work" / "proteins_throughput")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "proteins_throughput.md")
    parser.add_argument(
        "--live",
        action="store_true",
        help="run the checkout's code directly instead of a copy taken at start (edits made meanwhile then count)",
    )
    parser.add_argument("--limit", type=int, help="only the first N genomes (a quick smoke test)")
    parser.add_argument("--no-snakemake", action="store_true", help="measure the library path only")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile of bacflow's path")
    parser.add_argument("--top", type=int, default=15, help="functions listed from the profile")
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.15,
        help="a measurement during which other processes used more CPUs than this (on average) is disturbed "
        "and repeated (default 0.15)",
    )
    parser.add_argument("--quiet-budget", type=float, default=60.0, help="seconds of such waiting in all")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts of a disturbed measurement")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=420.0,
        help="no more extra attempts once the benchmark has run this many seconds (default 420)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="seconds to wait, at most, for other processes to go quiet before each measurement",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine_info = machine()  # the git state matching the snapshot
    load_bacflow(REPO if args.live else snapshot(args.workdir / "code"))
    report: dict = {
        "command": " ".join([_short(sys.executable), *sys.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info,
        "code": "the checkout itself"
        if args.live
        else f"a copy of the checkout's {', '.join(SNAPSHOT_PATHS)} taken at start ({args.workdir / 'code'})",
        "repeats": args.repeats,
        "shard_size": args.shard_size,
        "notes": [],
    }

    sheet = args.workdir / "samples.tsv"
    samples = []
    lines = ["genome_id\tpath\tgenetic_code\tkind"]
    genomes = GENOMES[: args.limit] if args.limit else GENOMES
    for genome_id, relative, code, kind in genomes:
        path = (args.data / relative).resolve()
        if not path.is_file():
            raise SystemExit(f"{path}: missing (give the shared data folder with --data)")
        samples.append(Sample(genome_id, str(path), None, code, kind, genome_id, None))
        lines.append(f"{genome_id}\t{path}\t{code}\t{kind}")
    sheet.write_text("\n".join(lines) + "\n")
    params = AnnotationParams(annotation="call")
    n = len(samples)

    # Warm-up (not timed): file cache, imports; checks that both sides do the same work.
    print(f"warm-up on {n} genomes ...", flush=True)
    baseline = run_baseline(samples, 1)
    library, qc = annotate_shard(samples, params, threads=1)
    check_same_work(samples, baseline, library)
    modes = set(qc.column("mode").to_pylist())
    if qc.column("quarantine_reason").null_count != n or modes != {"single"}:
        raise SystemExit(f"unexpected QC: modes {modes}, quarantined {n - qc.column('quarantine_reason').null_count}")
    report["checks"] = (
        f"baseline and annotate_shard give identical protein sequences in the same order for all {n} genomes"
    )
    bases = sum(qc.column("bases").to_pylist())
    report["genomes"] = {
        "count": n,
        "mbp": bases / 1e6,
        "contigs": sum(qc.column("contigs").to_pylist()),
        "proteins": library.num_rows,
        "shards": -(-n // args.shard_size),
        "list": [
            {"genome_id": g, "path": p, "genetic_code": c, "kind": k, "bases": b}
            for (g, p, c, k), b in zip(genomes, qc.column("bases").to_pylist(), strict=False)
        ],
    }

    variants: dict = {
        "baseline": lambda: run_baseline(samples, 1),
        "baseline_threads2": lambda: run_baseline(samples, 2),
        "library_threads1": lambda: annotate_shard(samples, params, threads=1),
        "library_threads2": lambda: annotate_shard(samples, params, threads=2),
    }
    smk_args = {
        "snakemake_cores1": (1, "--set-threads", "proteins_shard=1"),
        "snakemake_cores2": (2, "--set-threads", "proteins_shard=1"),
        "snakemake_cores2_jobthreads2": (2,),
    }
    smk_runs: dict[str, list[dict]] = {name: [] for name in smk_args}
    if not args.no_snakemake:
        root = args.workdir / "runs"
        check_run = run_snakemake(root, "check", sheet, args.shard_size, 2, "--set-threads", "proteins_shard=1")
        check_workflow_table(root / "check", library)
        report["checks"] += "; the workflow's proteins parquet equals annotate_shard's table"
        report["snakemake_command_example"] = " ".join(check_run["command"])

        for name, (cores, *extra) in smk_args.items():

            def run(name=name, cores=cores, extra=extra):
                result = run_snakemake(root, name, sheet, args.shard_size, cores, *extra)
                result["jobs_span_s"] = _jobs_span(root / name)
                smk_runs[name].append(result)
                return result

            variants[name] = run
        variants["snakemake_dryrun"] = lambda: run_dryrun(root, sheet, args.shard_size)

    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    foreign: dict[str, list[float]] = {name: [] for name in variants}
    attempts: list[dict] = []
    total_waited = 0.0
    names = list(variants)
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            best = None
            for attempt in range(1 + args.retries):
                waited = wait_for_quiet(min(args.quiet_wait, max(0.0, args.quiet_budget - total_waited)))
                total_waited += waited
                result, sample = measure(variants[name])
                if isinstance(result, dict) and "seconds" in result:
                    sample["wall_s"] = result["seconds"]  # the subprocess alone
                sample.update(variant=name, repeat=repeat + 1, attempt=attempt + 1, waited_for_quiet_s=waited)
                sample["clean"] = sample["foreign_cpus"] <= args.max_foreign
                attempts.append(sample)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {name:30s} {sample['wall_s']:7.2f} s wall "
                    f"{sample['cpu_s']:7.2f} s cpu  foreign load {sample['foreign_cpus']:.2f} cpus"
                    + ("" if sample["clean"] else "  (disturbed)"),
                    flush=True,
                )
                if best is None or sample["foreign_cpus"] < best["foreign_cpus"]:
                    best = sample
                if sample["clean"]:
                    break
                if time.perf_counter() - started > args.time_budget:
                    break  # no time left for another attempt
            times[name].append(best["wall_s"])
            cpu[name].append(best["cpu_s"])
            foreign[name].append(best["foreign_cpus"])
    report["attempts"] = attempts
    report["waited_for_quiet_s"] = total_waited
    disturbed = [a for a in attempts if not a["clean"]]
    if disturbed:
        kept = sum(
            1
            for a in disturbed
            if a
            is min(
                (b for b in attempts if b["variant"] == a["variant"] and b["repeat"] == a["repeat"]),
                key=lambda b: b["foreign_cpus"],
            )
        )
        report["notes"].append(
            f"{len(disturbed)} of {len(attempts)} measurements saw other processes on the machine use more than "
            f"{args.max_foreign} CPUs on average and were repeated (up to {args.retries} times); "
            f"{kept} disturbed measurement(s) remain in the medians (the least disturbed attempt was kept)"
        )

    report["summary"] = summarise(times, cpu, foreign, n, bases, library.num_rows)
    report["scaling"] = scaling(report["summary"])
    if not args.no_snakemake:
        report["snakemake_breakdown"] = snakemake_breakdown(smk_runs)
    if not args.no_snakemake:
        report["fixed_costs"] = fixed_costs(report["summary"], n, report["genomes"]["shards"])
    if not args.no_profile:
        print("profiling bacflow's per-genome path ...", flush=True)
        report["profile"] = profile_library(samples, params, args.top)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["total_benchmark_s"] = time.perf_counter() - started

    over = {
        name: row["ratio_to_reference"]
        for name, row in report["summary"].items()
        if name != row.get("reference") and row.get("ratio_to_reference", 0) > 1.10
    }
    report["notes"].append(
        "overhead target (<= 1.10 x the baseline with the same parallelism) "
        + (
            "met by every variant"
            if not over
            else "exceeded by: " + ", ".join(f"{k} ({v:.2f})" for k, v in over.items())
        )
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown(report))
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(markdown(report).split("## JSON")[0])
    print(f"written: {args.output} and {args.output.with_suffix('.json')} ({report['total_benchmark_s']:.0f} s)")


def _short(path: str) -> str:
    try:
        return str(Path(path).relative_to(REPO))
    except ValueError:
        return path


def _jobs_span(workdir: Path) -> float:
    """Wall time covered by at least one job (union of job intervals), from Snakemake's benchmark files.

    A benchmark file holds the duration only, so the interval of a job is taken as ending at the file's
    modification time.
    """
    intervals = []
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        end = tsv.stat().st_mtime
        intervals.append((end - _benchmark_seconds(tsv), end))
    intervals.sort()
    covered, current_start, current_end = 0.0, None, None
    for start, end in intervals:
        if current_end is None or start > current_end:
            if current_end is not None:
                covered += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        covered += current_end - current_start
    return covered


if __name__ == "__main__":
    main()
