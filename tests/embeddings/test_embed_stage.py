"""The embeddings stage as library calls (what the workflow's jobs run), on a cohort of real proteins with
repeated genomes: each unique sequence embedded exactly once, the store reused across runs and bucket
counts but never across recipes, a killed bucket job resumed, and clear errors for bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from transformers import EsmTokenizer

from bacflow.core.errors import InputError
from bacflow.core.models import CPU_BF16_ENV
from bacflow.core.seqhash import seq_hash
from bacflow.embeddings.embedder import PROBE_SEQUENCE, Embedder
from bacflow.embeddings.encoders import load_encoder
from bacflow.embeddings.esm_encoder import EsmEncoder
from bacflow.embeddings.recipe import RECIPE
from bacflow.embeddings.stage import EmbeddingSettings, embed_bucket, embedding_qc, gather_shard, pending_shards
from bacflow.proteins.unique import bucket_of, gather_bucket, write_shard_unique
from conftest import needs_shared
from esm_helpers import CT_D_PROTEINS, read_fasta

pytestmark = needs_shared
CT_114V1_PROTEINS = CT_D_PROTEINS.parents[1] / "drafts" / "Ctrachomatis_114V1_GCF_003788785.1.cds_translations.faa.gz"
SETTINGS = EmbeddingSettings(dtype="float32", cpu_token_budget=3000)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, Path]:
    """Two genome shards of real proteins: shard 00000 holds two C. trachomatis strains, shard 00001 the
    first strain again under another genome_id (a repeated genome), plus proteins of a third strain."""
    folder = tmp_path_factory.mktemp("cohort")
    d_strain = read_fasta(CT_D_PROTEINS)[:80] + [p for p in read_fasta(CT_D_PROTEINS) if len(p) > 1022][:2]
    strain_114 = read_fasta(CT_114V1_PROTEINS)[:80]
    genomes = {
        "00000": {"ctD": d_strain, "ct114": strain_114},
        "00001": {"ctD_again": d_strain, "ct114_part": strain_114[40:]},
    }
    paths = {}
    for shard, members in genomes.items():
        rows = [
            {"genome_id": genome, "contig_index": 0, "protein_index": index, "sequence": protein,
             "length": len(protein), "seq_hash": seq_hash(protein)}
            for genome, proteins in members.items()
            for index, protein in enumerate(proteins)
        ]  # fmt: skip
        schema = pa.schema(
            [("genome_id", pa.string()), ("contig_index", pa.int32()), ("protein_index", pa.int32()),
             ("sequence", pa.string()), ("length", pa.int32()), ("seq_hash", pa.string())]
        )  # fmt: skip
        paths[shard] = folder / f"proteins-{shard}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), paths[shard])
    return paths


def run_stage(cohort: dict[str, Path], work: Path, model: Path, store: Path, n_buckets: int, settings=SETTINGS) -> dict:
    """unique -> embed every bucket -> gather every shard -> QC, as the workflow's jobs do."""
    unique = {shard: work / f"unique-{shard}.parquet" for shard in cohort}
    gathered = {shard: work / f"shard-{shard}.parquet" for shard in cohort}
    for shard, proteins in cohort.items():
        write_shard_unique(pq.read_table(proteins), unique[shard])
    counts, bucket_dirs = [], []
    for bucket in range(n_buckets):
        gather_bucket(unique.values(), bucket, n_buckets, work / f"bucket-{bucket}.parquet")
        bucket_dirs.append(work / f"vectors-{bucket}")
        counts.append(
            embed_bucket(
                work / f"bucket-{bucket}.parquet", unique, bucket_dirs[-1], gathered_paths=gathered, bucket=bucket,
                n_buckets=n_buckets, model=str(model), revision=None, store_root=store, settings=settings,
            )
        )  # fmt: skip
    for shard, proteins in cohort.items():
        gather_shard(proteins, bucket_dirs, shard, gathered[shard], work / f"qc-{shard}.parquet", store_root=store)
    embedding_qc([work / f"qc-{shard}.parquet" for shard in cohort], work / "qc.parquet")
    return {
        "counts": counts,
        "shards": {shard: pq.read_table(gathered[shard]) for shard in cohort},
        "qc": pq.read_table(work / "qc.parquet").to_pandas().set_index("genome_id"),
    }


def read_bucket_folder(folder: Path) -> pa.Table:
    """A bucket folder's rows of every shard, sorted by shard and seq_hash."""
    tables = [
        pq.read_table(path).append_column("shard", pa.repeat(path.stem, pq.read_metadata(path).num_rows))
        for path in sorted(folder.glob("shard=*.parquet"))
    ]
    return pa.concat_tables(tables).sort_by([("shard", "ascending"), ("seq_hash", "ascending")])


def bucket_job(
    bucket_path: Path,
    unique: dict,
    out: Path,
    model: Path,
    store: Path,
    settings=SETTINGS,
    n_buckets: int = 1,
    gathered=None,
) -> dict:
    """Bucket 0's job as the workflow runs it; by default no shard is gathered yet, so each gets rows."""
    gathered = gathered if gathered is not None else {shard: out.parent / "not-gathered" for shard in unique}
    return embed_bucket(
        bucket_path,
        unique,
        out,
        gathered_paths=gathered,
        bucket=0,
        n_buckets=n_buckets,
        model=str(model),
        revision=None,
        store_root=store,
        settings=settings,
    )


@pytest.fixture
def model_inputs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Every sequence (as its token ids) that the ESM-2 encoder is run on, in this test."""
    fed: list[tuple[int, ...]] = []
    forward = EsmEncoder.__call__

    def counting(self, input_ids, real):
        fed.extend(tuple(row[mask].tolist()) for row, mask in zip(input_ids, real, strict=False))
        return forward(self, input_ids, real)

    monkeypatch.setattr(EsmEncoder, "__call__", counting)
    return fed


def unique_sequences(cohort: dict[str, Path]) -> set[str]:
    return {s for path in cohort.values() for s in pq.read_table(path, columns=["sequence"]).column(0).to_pylist()}


def test_each_unique_sequence_is_embedded_exactly_once(cohort, tiny_esm: Path, tmp_path: Path, model_inputs):
    result = run_stage(cohort, tmp_path, tiny_esm, tmp_path / "store", n_buckets=3)
    tokenizer = EsmTokenizer.from_pretrained(tiny_esm)
    probe = tuple(tokenizer(PROBE_SEQUENCE)["input_ids"])
    embedded = Counter(ids for ids in model_inputs if ids != probe)
    expected = {tuple(tokenizer(s, truncation=True, max_length=1024)["input_ids"]) for s in unique_sequences(cohort)}
    assert set(embedded) == expected and set(embedded.values()) == {1}
    assert sum(count["embedded"] for count in result["counts"]) == len(expected)

    proteins = sum(table.num_rows for table in result["shards"].values())
    assert proteins > len(expected)  # the repeated genome really repeats sequences
    shard = result["shards"]["00000"]
    source = pq.read_table(cohort["00000"])
    assert shard.select(["genome_id", "protein_index", "seq_hash"]).equals(
        source.select(["genome_id", "protein_index", "seq_hash"])
    )
    assert (
        pa.types.is_fixed_size_list(shard.schema.field("vector").type)
        and shard.schema.field("vector").type.list_size == 48
    )

    qc = result["qc"]
    lengths = source.filter(pc.equal(source.column("genome_id"), "ctD")).column("length").to_pylist()
    assert (
        qc.loc["ctD", "proteins"] == 82 and qc.loc["ctD", "truncated_proteins"] == sum(n > 1022 for n in lengths) >= 2
    )
    assert (qc.sequences_embedded + qc.sequences_reused == qc.distinct_sequences).all()
    assert (qc.sequences_reused == 0).all()  # nothing was in the store before this run


def test_a_second_run_with_the_same_store_embeds_nothing(cohort, tiny_esm: Path, tmp_path: Path, model_inputs):
    first = run_stage(cohort, tmp_path / "first", tiny_esm, tmp_path / "store", n_buckets=3)
    model_inputs.clear()
    # Another bucket count too: a bucket of 2 reads the compatible parts written by a run with 3.
    second = run_stage(cohort, tmp_path / "second", tiny_esm, tmp_path / "store", n_buckets=2)
    assert model_inputs == [] and sum(count["embedded"] for count in second["counts"]) == 0
    assert (second["qc"].sequences_embedded == 0).all()
    assert (second["qc"].sequences_reused == second["qc"].distinct_sequences).all()
    for shard, table in first["shards"].items():
        assert table.column("vector").equals(second["shards"][shard].column("vector"))


def test_a_new_recipe_embeds_everything_again(cohort, tiny_esm: Path, tmp_path: Path, model_inputs):
    run_stage(cohort, tmp_path / "first", tiny_esm, tmp_path / "store", n_buckets=2)
    model_inputs.clear()
    half = run_stage(
        cohort, tmp_path / "half", tiny_esm, tmp_path / "store", 2, replace(SETTINGS, vector_dtype="float16")
    )
    assert sum(count["embedded"] for count in half["counts"]) == len(unique_sequences(cohort))
    assert half["shards"]["00000"].schema.field("vector").type.value_type == pa.float16()
    assert len(list((tmp_path / "store").iterdir())) == 2  # one folder per recipe


def test_esmc_vectors_get_a_recipe_of_their_own_in_the_same_store(
    cohort, tiny_esm: Path, tiny_esmc: Path, tmp_path: Path
):
    esm2 = run_stage(cohort, tmp_path / "esm2", tiny_esm, tmp_path / "store", n_buckets=2)
    esmc = run_stage(cohort, tmp_path / "esmc", tiny_esmc, tmp_path / "store", n_buckets=2)
    assert sum(count["embedded"] for count in esmc["counts"]) == len(unique_sequences(cohort))
    keys = {result["counts"][0]["recipe"] for result in (esm2, esmc)}
    assert len(keys) == 2 and {folder.name for folder in (tmp_path / "store").iterdir()} == keys
    recipe = json.loads((tmp_path / "store" / esmc["counts"][0]["recipe"] / "recipe.json").read_text())
    assert recipe["encoder"] == "esmc" and "ESM-C" in recipe["architecture"] and recipe["random_init"]  # tiny
    # The gathered vectors are the embedder's, in genome order.
    shard = esmc["shards"]["00000"]
    proteins = pq.read_table(cohort["00000"]).column("sequence").to_pylist()
    encoder, tokenizer = load_encoder(tiny_esmc, torch.device("cpu"), torch.float32)
    direct, _, _ = Embedder(encoder, tokenizer, pooling="mean", max_length=1024, token_budget=3000).embed(proteins)
    assert np.abs(np.stack(shard.column("vector").to_numpy(zero_copy_only=False)) - direct).max() <= 1e-5
    # A bucket.json written before the recipe named its encoder family is read as ESM-2's.
    info_path = tmp_path / "esm2" / "vectors-0" / "bucket.json"
    info = json.loads(info_path.read_text())
    del info["recipe"]["encoder"]
    info_path.write_text(json.dumps(info))
    folders = [tmp_path / "esm2" / f"vectors-{bucket}" for bucket in range(2)]
    out = tmp_path / "regathered.parquet"
    gather_shard(cohort["00001"], folders, "00001", out, tmp_path / "q.parquet", store_root=tmp_path / "store")
    assert pq.read_table(out).column("vector").equals(esm2["shards"]["00001"].column("vector"))


def test_vectors_do_not_depend_on_the_bucket_count(cohort, tiny_esm: Path, tmp_path: Path):
    one = run_stage(cohort, tmp_path / "one", tiny_esm, tmp_path / "store1", n_buckets=1)
    five = run_stage(
        cohort,
        tmp_path / "five",
        tiny_esm,
        tmp_path / "store5",
        n_buckets=5,
        settings=replace(SETTINGS, cpu_token_budget=900),
    )
    for shard, table in one["shards"].items():
        a = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        b = np.stack(five["shards"][shard].column("vector").to_numpy(zero_copy_only=False))
        assert np.abs(a - b).max() <= 1e-5


def test_concurrent_jobs_on_one_store_keep_it_complete_and_consistent(cohort, tiny_esm: Path, tmp_path: Path):
    """Two runs' jobs for the same bucket, at the same time, on one store (threads stand in for jobs)."""
    unique = {shard: tmp_path / f"unique-{shard}.parquet" for shard in cohort}
    for shard, proteins in cohort.items():
        write_shard_unique(pq.read_table(proteins), unique[shard])
    total = gather_bucket(unique.values(), 0, 1, tmp_path / "bucket-0.parquet")
    settings = replace(SETTINGS, checkpoint_sequences=25)

    def job(name: str) -> dict:
        return bucket_job(
            tmp_path / "bucket-0.parquet", unique, tmp_path / name, tiny_esm, tmp_path / "store", settings
        )

    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(job, ["a", "b"]))
    store = pq.read_table(tmp_path / "store" / counts[0]["recipe"] / "parts")
    assert set(store.column("seq_hash").to_pylist()) == set(
        pq.read_table(tmp_path / "bucket-0.parquet").column("seq_hash").to_pylist()
    )
    assert store.num_rows >= total and not list((tmp_path / "store").glob("**/.*.tmp"))
    a, b = (read_bucket_folder(tmp_path / name) for name in "ab")
    assert a.column("seq_hash").equals(b.column("seq_hash"))
    assert (
        np.abs(
            np.stack(a.column("vector").to_numpy(zero_copy_only=False))
            - np.stack(b.column("vector").to_numpy(zero_copy_only=False))
        ).max()
        <= 1e-5
    )


KILLABLE = """
import json, sys, time
from bacflow.embeddings.esm_encoder import EsmEncoder
forward = EsmEncoder.__call__
def slow(self, *args):
    time.sleep(0.2)  # slow enough to be killed midway
    return forward(self, *args)
EsmEncoder.__call__ = slow
from bacflow.embeddings.stage import EmbeddingSettings, embed_bucket
args = json.loads(sys.argv[1])
embed_bucket(args["bucket"], args["unique"], args["out"], gathered_paths={shard: "none" for shard in args["unique"]},
             bucket=0, n_buckets=1, model=args["model"], revision=None, store_root=args["store"],
             settings=EmbeddingSettings(**args["settings"]))
"""


def test_a_killed_bucket_job_resumes_and_the_store_is_complete_and_correct(cohort, tiny_esm: Path, tmp_path: Path):
    unique = {shard: tmp_path / f"unique-{shard}.parquet" for shard in cohort}
    for shard, proteins in cohort.items():
        write_shard_unique(pq.read_table(proteins), unique[shard])
    bucket = tmp_path / "bucket-0.parquet"
    total = gather_bucket(unique.values(), 0, 1, bucket)
    store, out = tmp_path / "store", tmp_path / "vectors-0"
    settings = replace(SETTINGS, cpu_token_budget=1000, checkpoint_sequences=10)
    arguments = {"bucket": str(bucket), "unique": {k: str(v) for k, v in unique.items()}, "out": str(out),
                 "model": str(tiny_esm), "store": str(store), "settings": asdict(settings)}  # fmt: skip
    job = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, json.dumps(arguments)], env={**os.environ, "PYTHONPATH": str(Path.cwd())}
    )
    deadline = time.monotonic() + 120
    while len(list(store.glob("*/parts/*.parquet"))) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    kept = list(store.glob("*/parts/*.parquet"))
    assert job.returncode == -signal.SIGKILL and len(kept) >= 2 and not out.exists()
    stored_before = sum(pq.read_metadata(path).num_rows for path in kept)
    assert 0 < stored_before < total

    counts = bucket_job(bucket, unique, out, tiny_esm, store, settings)
    assert counts["reused"] >= stored_before and counts["embedded"] == total - counts["reused"]
    parts = pq.read_table(store / counts["recipe"] / "parts")
    assert parts.num_rows == total and len(set(parts.column("seq_hash").to_pylist())) == total

    clean = tmp_path / "clean"
    bucket_job(bucket, unique, clean / "vectors", tiny_esm, clean, settings)
    resumed, fresh = read_bucket_folder(out), read_bucket_folder(clean / "vectors")
    assert resumed.column("seq_hash").equals(fresh.column("seq_hash"))
    difference = np.stack(resumed.column("vector").to_numpy(zero_copy_only=False)) - np.stack(
        fresh.column("vector").to_numpy(zero_copy_only=False)
    )
    assert np.abs(difference).max() <= 1e-5


def test_an_empty_bucket_loads_no_model(tiny_esm: Path, tmp_path: Path, model_inputs):
    empty = tmp_path / "bucket-0.parquet"
    pq.write_table(pa.table({"seq_hash": pa.array([], pa.string()), "sequence": pa.array([], pa.string())}), empty)
    counts = bucket_job(empty, {}, tmp_path / "out", tiny_esm, tmp_path / "store", n_buckets=4)
    assert counts["sequences"] == 0 and counts["model_calls"] == 0 and model_inputs == []
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["bucket.json"]


def test_bad_bucket_files_are_named(tiny_esm: Path, tmp_path: Path):
    def job(n_buckets: int = 4) -> None:
        bucket_job(tmp_path / "bucket.parquet", {}, tmp_path / "out", tiny_esm, tmp_path / "store", n_buckets=n_buckets)

    def run(table: pa.Table, n_buckets: int = 4) -> None:
        pq.write_table(table, tmp_path / "bucket.parquet")
        job(n_buckets)

    with pytest.raises(InputError, match="bucket.parquet.*lacks seq_hash/sequence"):
        run(pa.table({"seq_hash": [seq_hash("MKV")]}))
    (tmp_path / "bucket.parquet").write_bytes(b"")  # e.g. a file cut short by a full disk
    with pytest.raises(InputError, match="bucket file .*bucket.parquet: unreadable"):
        job()
    wrong = next(s for s in ("MKV", "MKVL", "MKVLA", "MKVLAW") if bucket_of(seq_hash(s), 4) != 0)
    with pytest.raises(InputError, match="row 0.*belongs to bucket .* of 4, not 0"):
        run(pa.table({"seq_hash": [seq_hash(wrong)], "sequence": [wrong]}))
    with pytest.raises(InputError, match="row 0: empty sequence"):
        run(pa.table({"seq_hash": [seq_hash("")], "sequence": [""]}), n_buckets=1)


def test_gather_refuses_missing_buckets_and_mixed_recipes(cohort, tiny_esm: Path, tmp_path: Path):
    run_stage(cohort, tmp_path, tiny_esm, tmp_path / "store", n_buckets=2)
    folders = [tmp_path / "vectors-0", tmp_path / "vectors-1"]
    gather = {
        "shard": "00000",
        "out_path": tmp_path / "s.parquet",
        "qc_path": tmp_path / "q.parquet",
        "store_root": tmp_path / "store",
    }
    with pytest.raises(InputError, match=r"bucket folders \[0\] given, not all 2 buckets"):
        gather_shard(cohort["00000"], folders[:1], **gather)
    other = tmp_path / "other"
    run_stage(cohort, other, tiny_esm, other / "store", 2, replace(SETTINGS, pooling="mean_residues"))
    with pytest.raises(InputError, match="different embedding recipes"):
        gather_shard(cohort["00000"], [folders[0], other / "vectors-1"], **gather)
    (folders[1] / "bucket.json").unlink()
    with pytest.raises(InputError, match="vectors-1: no readable bucket.json"):
        gather_shard(cohort["00000"], folders, **gather)


def test_bucket_jobs_write_rows_only_for_shards_to_gather_and_gathers_read_the_store_without_them(
    cohort, tiny_esm: Path, tmp_path: Path
):
    """After a run, a bucket job writes no rows for shards whose gathered vectors are current; a shard
    gathered again (for its own reasons) reads the store instead, with the same vectors."""
    first = run_stage(cohort, tmp_path, tiny_esm, tmp_path / "store", n_buckets=2)
    unique = {shard: tmp_path / f"unique-{shard}.parquet" for shard in cohort}
    gathered = {shard: tmp_path / f"shard-{shard}.parquet" for shard in cohort}
    assert not list(tmp_path.glob("vectors-*/shard=*"))  # the gathers deleted the rows they read
    assert pending_shards(unique, gathered, first["counts"][0]["recipe"]) == []
    assert pending_shards(unique, gathered, "another-recipe") == sorted(cohort)
    os.utime(unique["00001"], (time.time() + 5, time.time() + 5))  # the shard's proteins changed
    counts = bucket_job(
        tmp_path / "bucket-0.parquet",
        unique,
        tmp_path / "again",
        tiny_esm,
        tmp_path / "store",
        n_buckets=2,
        gathered=gathered,
    )
    assert counts["embedded"] == 0 and counts["shards"] == 1
    assert [path.name for path in sorted((tmp_path / "again").glob("shard=*"))] == ["shard=00001.parquet"]

    again = tmp_path / "again-00000.parquet"
    gather_shard(
        cohort["00000"],
        [tmp_path / "vectors-0", tmp_path / "vectors-1"],
        "00000",
        again,
        tmp_path / "q.parquet",
        store_root=tmp_path / "store",
    )
    assert pq.read_table(again).equals(first["shards"]["00000"])


def test_dtype_auto_on_a_cpu_with_native_bfloat16_shares_the_store_of_bfloat16_gpu_jobs(
    cohort, tiny_esm: Path, tmp_path: Path, model_inputs, monkeypatch: pytest.MonkeyPatch
):
    """dtype auto is bfloat16 on such a CPU, as on a GPU (tests/embeddings/test_esm_model.py), and the device
    is not part of the recipe: a job with bfloat16 set (what a GPU job resolves auto to) reuses every vector."""
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    auto = run_stage(cohort, tmp_path / "auto", tiny_esm, tmp_path / "store", 2, replace(SETTINGS, dtype="auto"))
    store_part = next((tmp_path / "store").rglob("*.parquet"))
    metadata = {key.decode(): value.decode() for key, value in pq.read_schema(store_part).metadata.items()}
    assert json.loads(metadata[RECIPE])["dtype"] == "bfloat16"
    assert metadata["bacflow.embedding_dtype"] == f"bfloat16 (auto: CPU with native bfloat16 ({CPU_BF16_ENV}=1))"
    assert all("cpu" not in str(value) for value in json.loads(metadata[RECIPE]).values())
    model_inputs.clear()
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    named = run_stage(cohort, tmp_path / "named", tiny_esm, tmp_path / "store", 2, replace(SETTINGS, dtype="bfloat16"))
    assert model_inputs == [] and named["counts"][0]["recipe"] == auto["counts"][0]["recipe"]
