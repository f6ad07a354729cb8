#!/usr/bin/env python
"""Wall time and peak memory of bacflow's families stage against plain ``mmseqs easy-linclust``.

What it measures
----------------
Both sides cluster the same unique sequences with the same parameters (bacflow's defaults:
``--min-seq-id 0.5 -c 0.8 --cov-mode 1``) and the same threads:

* ``plain``: ``mmseqs easy-linclust plain.fasta ...`` on a FASTA of the unique sequences, in the order
  bacflow gives them to MMseqs2 (ascending seq_hash), named by seq_hash;
* ``bacflow``: a fresh Python process calling ``bacflow.families.stage.build_families`` on the unique-sequence
  buckets, as the ``families_cluster`` rule does: reading and checking the buckets, MMseqs2, ranking,
  the vocabulary (representatives FASTA and MMseqs2 database, id and member tables) and
  ``families.parquet``.

Wall time and peak resident memory (the largest of the process and its children, from ``wait4``) are
taken for each, ``--repeats`` times, interleaved; the report gives the median and minimum and the ratio
bacflow / plain (1.00 = no overhead; the target is <= 1.10). Before timing, one run of each checks that
both give the same clusters. A log of each bacflow run splits its time into MMseqs2 modules and the rest.

Data sets (from ``../shared/data``):

* ``mmseqs-example``: MMseqs2's example database, 20,000 UniProt proteins (18,801 distinct);
* ``cohort``: the proteins of 49 genomes: the 32 *C. trachomatis* GenBank files of ``cohort/`` (their
  own CDS) and every other genome there and in ``genomes/`` and ``drafts/`` (GenBank CDS, or gene-called
  FASTA), made by the workflow's ``proteins`` and unique-sequence stages (once, not timed);
* ``cohort-1/8``, ``cohort-1/4``, ``cohort-1/2``: subsets of the cohort's unique sequences (those whose
  seq_hash falls in the first part of the hash space), for how time grows with the number of sequences;
* ``cohort x13`` (``--variants 12``): the cohort's distinct sequences and 12 variants of each with 10% of
  the residues substituted at random (seeded), about half a million distinct sequences in families of
  real proteins: where MMseqs2's own time dominates.

How to run
----------
From the repository root, in the README's environment (about 10 minutes on 2 cores)::

    .venv/bin/python bench/families.py
    .venv/bin/python bench/families.py --repeats 5 --threads 8 --data /path/to/shared/data

Results go to ``bench/results/families.md`` (with the command that made them) and
``bench/results/families.json``; scratch files go to ``bench/work/families/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from machine import machine_info, machine_markdown  # noqa: E402

from bacflow.families import mmseqs  # noqa: E402
from bacflow.families.stage import FamilyParams, build_families, iter_sorted  # noqa: E402
from bacflow.proteins.unique import sequence_buckets  # noqa: E402

WORK = REPO / "bench" / "work" / "families"
RESULTS = REPO / "bench" / "results"
PARAMS = FamilyParams()
PLAIN_ARGS = ["--min-seq-id", str(PARAMS.min_seq_id), "-c", str(PARAMS.coverage), "--cov-mode", str(PARAMS.cov_mode)]
SUBSETS = {"cohort-1/8": 8, "cohort-1/4": 4, "cohort-1/2": 2}
# Residues substituted in each variant of a cohort sequence: 90% identity, so variants join their
# original's family at the 50% threshold.
VARIANT_RATE = 0.1


def cohort_sheet(data: Path, sheet: Path) -> int:
    """A sample sheet of every genome in cohort/, genomes/ and drafts/ (protein FASTA excluded)."""
    rows = []
    for folder in ("cohort", "genomes", "drafts"):
        for path in sorted((data / folder).glob("*.gz")):
            if path.name.endswith(".faa.gz"):
                continue
            code = "4" if path.name.startswith("Mgenitalium") else "11"
            rows.append(f"{folder}_{path.name.removesuffix('.gz')}\t{path}\t{code}")
    sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.write_text("genome_id\tpath\tgenetic_code\n" + "\n".join(rows) + "\n")
    return len(rows)


def make_cohort(data: Path, cores: int) -> tuple[list[Path], int]:
    """Unique-sequence buckets of the cohort, made by the workflow (kept between benchmark runs)."""
    folder = WORK / "cohort"
    genomes = cohort_sheet(data, folder / "samples.tsv")
    subprocess.run(
        [
            *(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")),
            *("--directory", str(folder), "--cores", str(cores), "families"),
            *("--configfile", str(REPO / "config" / "config.yaml")),
            *("--config", f"samples={folder / 'samples.tsv'}", "outdir=results", "shard_size=10"),
            "--until",
            "unique_bucket",
        ],
        check=True,
        cwd=REPO,
    )
    return sorted((folder / "results" / "unique").glob("bucket=*.parquet")), genomes


def make_example(data: Path) -> list[Path]:
    """Unique-sequence buckets of MMseqs2's example database, made with bacflow.proteins.unique."""
    folder = WORK / "mmseqs-example"
    paths = [folder / f"bucket={bucket:04d}.parquet" for bucket in range(8)]
    if all(path.exists() for path in paths):
        return paths
    with gzip.open(data / "mmseqs2" / "DB.fasta.gz", "rt") as handle:
        sequences = ["".join(block.partition("\n")[2].split()) for block in handle.read().lstrip(">").split("\n>")]
    return sequence_buckets(sequences, folder, len(paths))


def make_variants(buckets: list[Path], copies: int, rate: float) -> list[Path]:
    """The cohort's distinct sequences and `copies` variants of each (a share `rate` of residues substituted
    at random, seeded): a corpus of several hundred thousand sequences in families of real proteins, to see
    how the overhead behaves where MMseqs2's own time dominates."""
    folder = WORK / f"cohort-x{copies + 1}"
    paths = [folder / f"bucket={bucket:04d}.parquet" for bucket in range(len(buckets))]
    if all(path.exists() for path in paths):
        return paths
    originals = [value for path in buckets for value in pq.read_table(path, columns=["sequence"]).column(0).to_pylist()]
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    sequences = list(originals)
    for _ in range(copies):
        for original in originals:
            residues = np.frombuffer(original.encode(), dtype=np.uint8).copy()
            hits = rng.random(len(residues)) < rate
            residues[hits] = rng.choice(alphabet, int(hits.sum()))
            sequences.append(residues.tobytes().decode())
    return sequence_buckets(sequences, folder, len(paths))


def make_subset(buckets: list[Path], name: str, part: int) -> list[Path]:
    """The sequences whose hash lies in the first 1/`part` of the hash space (a uniform sample)."""
    folder = WORK / name.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    bound = f"{(1 << 128) // part:032x}"
    paths = []
    for bucket in buckets:
        table = pq.read_table(bucket)
        paths.append(folder / bucket.name)
        pq.write_table(table.filter(pc.less(table.column("seq_hash"), bound)), paths[-1])
    return paths


def write_plain_fasta(buckets: list[Path], fasta: Path) -> tuple[int, int]:
    """The sequences in bacflow's order, named by seq_hash; returns (sequences, proteins)."""
    sequences = proteins = 0
    with open(fasta, "w") as handle:
        for table in iter_sorted(buckets, ["occurrences"]):
            names, residues = table.column("seq_hash").to_pylist(), table.column("sequence").to_pylist()
            handle.write("".join(f">{name}\n{sequence}\n" for name, sequence in zip(names, residues, strict=False)))
            sequences += table.num_rows
            proteins += pc.sum(table.column("occurrences")).as_py()
    return sequences, proteins


def tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:  # the process ended meanwhile
            continue
        pid, parent = int(entry.name), int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(pid)
        rss[pid] = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(command: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system, the process and its children) and peak resident memory
    of the whole process tree (the sum over its processes, sampled every 20 ms)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": peak / 2**20}


def bacflow_command(buckets: list[Path], out: Path, threads: int) -> list[str]:
    return [sys.executable, __file__, "--run-bacflow", str(out), str(threads), *map(str, buckets)]


def plain_command(fasta: Path, out: Path, threads: int) -> list[str]:
    return [
        "mmseqs",
        "easy-linclust",
        str(fasta),
        str(out / "plain"),
        str(out / "tmp"),
        *PLAIN_ARGS,
        "--threads",
        str(threads),
    ]


def run_bacflow(out: Path, threads: int, buckets: list[str]) -> None:
    """The measured bacflow side: what scripts/families_cluster.py runs, logging to out/bacflow.log."""
    logging.basicConfig(filename=out / "bacflow.log", level=logging.INFO, format="%(created).3f %(name)s %(message)s")
    build_families(buckets, out / "families.parquet", out / "vocab", PARAMS, threads=threads, tmpdir=out)


def time_split(log: Path) -> dict[str, float]:
    """Seconds in each MMseqs2 module and in everything bacflow logged after the first module started."""
    lines = [line.split(" ", 2) for line in log.read_text().splitlines() if line[:1].isdigit()]
    split: dict[str, float] = {}
    for index, (stamp, _name, message) in enumerate(lines):
        if message.startswith("running "):
            module = message.split()[2]
            end = next(
                (
                    float(s)
                    for s, n, m in lines[index + 1 :]
                    if n != "bacflow.families.mmseqs" or m.startswith("running ")
                ),
                float(lines[-1][0]),
            )
            split[f"mmseqs {module}"] = split.get(f"mmseqs {module}", 0.0) + end - float(stamp)
    return split


def clusters_match(out: Path) -> bool:
    ours = pq.read_table(out / "bacflow" / "families.parquet", columns=["seq_hash", "representative"])
    mine = dict(zip(ours.column("seq_hash").to_pylist(), ours.column("representative").to_pylist(), strict=False))
    theirs = {}
    for line in (out / "plain" / "plain_cluster.tsv").read_text().splitlines():
        representative, member = line.split("\t")
        theirs[member] = representative
    return mine == theirs


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def bench_set(name: str, buckets: list[Path], threads: int, repeats: int) -> dict:
    folder = WORK / "runs" / name.replace("/", "_")
    fresh(folder)
    fasta = folder / "plain.fasta"
    sequences, proteins = write_plain_fasta(buckets, fasta)
    commands = {
        "bacflow": lambda: bacflow_command(buckets, fresh(folder / "bacflow"), threads),
        "plain": lambda: plain_command(fasta, fresh(folder / "plain"), threads),
    }
    for command in commands.values():  # warm-up, and the check that both give the same clusters
        measure(command())
    same = clusters_match(folder)
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in commands}
    for repeat in range(repeats):
        for side in list(commands) if repeat % 2 == 0 else list(reversed(commands)):
            runs[side].append(measure(commands[side]()))
            run = runs[side][-1]
            print(
                f"  {name} {side}: {run['wall_s']:.2f} s, {run['cpu_s']:.2f} CPU s, {run['peak_mib']:.0f} MiB",
                flush=True,
            )
    summary = {"sequences": sequences, "proteins": proteins, "same_clusters": same}
    for side, values in runs.items():
        summary[side] = {
            **{f"{key}_median": statistics.median(run[key] for run in values) for key in ("wall_s", "cpu_s")},
            "wall_s_min": min(run["wall_s"] for run in values),
            "peak_mib": max(run["peak_mib"] for run in values),
            "runs": values,
        }
    for key in ("wall_s_median", "wall_s_min", "cpu_s_median"):
        summary[f"ratio_{key}"] = summary["bacflow"][key] / summary["plain"][key]
    summary["bacflow_split_s"] = time_split(folder / "bacflow" / "bacflow.log")
    representatives = pq.read_table(folder / "bacflow" / "families.parquet", columns=["representative"])
    summary["clusters"] = pc.count_distinct(representatives.column("representative")).as_py()
    return summary


def growth(results: dict, side: str, key: str) -> float:
    """Exponent b of cost ~ sequences^b, least squares over the cohort and its subsets."""
    points = [
        (math.log(result["sequences"]), math.log(result[side][key]))
        for name, result in results.items()
        if name.startswith("cohort")
    ]
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def report(
    results: dict, args: argparse.Namespace, genomes: int, command: str, load: tuple[float, ...], machine: dict
) -> str:
    modules = sorted({module for result in results.values() for module in result["bacflow_split_s"]})
    lines = [
        "# Families stage vs plain `mmseqs easy-linclust`",
        "",
        f"Command: `{command}`",
        "",
        machine_markdown(machine),
        f"Load average (1, 5, 15 min) {', '.join(f'{value:.1f}' for value in load)} before and "
        f"{', '.join(f'{value:.1f}' for value in os.getloadavg())} after. MMseqs2 {mmseqs.version()}, "
        f"{args.threads} threads on both sides, {args.repeats} repeats each after one warm-up, parameters "
        f"`{' '.join(PLAIN_ARGS)}` (bacflow's defaults). The cohort is {genomes} genomes. Peak memory is the "
        "resident memory of the whole process tree (Python and MMseqs2 together), sampled every 20 ms.",
        "",
        "| data set | proteins | unique sequences | clusters | same clusters | plain wall s median (min) "
        "| bacflow wall s median (min) | wall ratio median (min) | plain CPU s | bacflow CPU s | CPU ratio "
        "| plain peak MiB | bacflow peak MiB |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        plain, ours = r["plain"], r["bacflow"]
        lines.append(
            f"| {name} | {r['proteins']:,} | {r['sequences']:,} | {r['clusters']:,} "
            f"| {'yes' if r['same_clusters'] else 'NO'} "
            f"| {plain['wall_s_median']:.2f} ({plain['wall_s_min']:.2f}) "
            f"| {ours['wall_s_median']:.2f} ({ours['wall_s_min']:.2f}) "
            f"| {r['ratio_wall_s_median']:.2f} ({r['ratio_wall_s_min']:.2f}) "
            f"| {plain['cpu_s_median']:.2f} | {ours['cpu_s_median']:.2f} | {r['ratio_cpu_s_median']:.2f} "
            f"| {plain['peak_mib']:.0f} | {ours['peak_mib']:.0f} |"
        )
    lines += [
        "",
        "Growth with the number of unique sequences n (the cohort and its subsets; cost ~ n^b): wall time "
        f"b = {growth(results, 'plain', 'wall_s_median'):.2f} plain, {growth(results, 'bacflow', 'wall_s_median'):.2f} "
        f"bacflow; CPU time b = {growth(results, 'plain', 'cpu_s_median'):.2f} plain, "
        f"{growth(results, 'bacflow', 'cpu_s_median'):.2f} bacflow.",
        "",
        "Where bacflow's wall time goes (the last run of each set; seconds in each MMseqs2 module, from its log;",
        "`rest` is Python start-up and imports, reading and checking the buckets, writing the FASTA, ranking,",
        "and writing the vocabulary and the tables):",
        "",
        "| data set | wall s | " + " | ".join(modules) + " | rest s |",
        "|---|---:|" + "---:|" * (len(modules) + 1),
    ]
    for name, r in results.items():
        wall = r["bacflow"]["runs"][-1]["wall_s"]
        spent = [r["bacflow_split_s"].get(module, 0.0) for module in modules]
        lines.append(
            f"| {name} | {wall:.2f} | " + " | ".join(f"{s:.2f}" for s in spent) + f" | {wall - sum(spent):.2f} |"
        )
    lines += ["", "Raw numbers: `families.json` beside this file.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "families.md")
    parser.add_argument(
        "--variants", type=int, default=12, help="variants of each cohort sequence in the largest set (0: no such set)"
    )
    parser.add_argument("--run-bacflow", nargs="+", metavar=("OUT THREADS", "BUCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_bacflow:
        out, threads, *buckets = args.run_bacflow
        run_bacflow(Path(out), int(threads), buckets)
        return
    command = " ".join(["python", "bench/families.py", *sys.argv[1:]])
    load = os.getloadavg()
    cohort, genomes = make_cohort(args.data, args.threads)
    sets = {"mmseqs-example": make_example(args.data)}
    sets.update({name: make_subset(cohort, name, part) for name, part in SUBSETS.items()})
    sets["cohort"] = cohort
    if args.variants:
        sets[f"cohort x{args.variants + 1}"] = make_variants(cohort, args.variants, VARIANT_RATE)
    results = {}
    for name, buckets in sets.items():
        print(f"{name}:", flush=True)
        results[name] = bench_set(name, buckets, args.threads, args.repeats)
    machine = machine_info()
    text = report(results, args, genomes, command, load, machine)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    document = {"command": command, "machine": machine, "results": results}
    args.output.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
