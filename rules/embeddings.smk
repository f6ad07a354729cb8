import functools

from bacflow.embedding_stage import EmbeddingSettings
from bacflow.esm_model import planned_model

ESM = config["embeddings"]
EMBEDDINGS = OUTDIR / "embeddings"
# The store outlives runs when embedding_store names a shared folder; by default it is the run's own.
EMBEDDING_STORE = Path(config["embedding_store"] or EMBEDDINGS)
TINY_ESM = OUTDIR / "models" / "esm2-tiny"
EMBEDDING_SHARDS = expand(EMBEDDINGS / "shards" / "shard={shard}.parquet", shard=SHARDS)
EMBEDDING_SETTINGS = EmbeddingSettings.from_config(ESM).output_params()


# (model, revision) for the bucket jobs, worked out once when a bucket job is planned (other targets
# never touch the hub): a hub id is resolved to a commit (downloaded if need be), so that jobs load that
# commit from the cache and a missing model fails before any job runs.
ESM_MODEL = functools.cache(
    lambda: (
        (str(TINY_ESM), None)
        if ESM["tiny_model"]
        else planned_model(ESM["model"], ESM["revision"])
    )
)


# Always defined, so that `snakemake esm_tiny_model` builds one on its own; only tiny_model: true makes the
# stage use it.
rule esm_tiny_model:
    output:
        directory(TINY_ESM),
    log:
        OUTDIR / "logs" / "esm_tiny_model.log",
    benchmark:
        OUTDIR / "benchmarks" / "esm_tiny_model.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/esm_tiny_model.py"


rule embed_bucket:
    input:
        bucket=OUTDIR / "unique" / "bucket={bucket}.parquet",
        shards=expand(
            OUTDIR / "unique" / "shards" / "shard={shard}.parquet", shard=SHARDS
        ),
        # A local model folder is an input: replacing its weights re-runs the bucket jobs.
        model=lambda wildcards: [] if ESM_MODEL()[1] else [ESM_MODEL()[0]],
    output:
        directory(EMBEDDINGS / "buckets" / "bucket={bucket}"),
    log:
        OUTDIR / "logs" / "embed_bucket" / "{bucket}.log",
    benchmark:
        OUTDIR / "benchmarks" / "embed_bucket" / "{bucket}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: config["threads"]["embeddings"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: ESM["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: ESM["runtime"] * attempt,
    params:
        shards=list(SHARDS),
        # Which shards get rows: those whose gathered vectors are missing or out of date.
        gathered=EMBEDDING_SHARDS,
        buckets=config["buckets"],
        model=lambda wildcards: ESM_MODEL()[0],
        revision=lambda wildcards: ESM_MODEL()[1],
        # Not derived from the outputs: a store may be shared by runs (it must be on a shared
        # filesystem for cluster runs, like the results).
        store=lambda wildcards: str(EMBEDDING_STORE),
        settings=EMBEDDING_SETTINGS,
    script:
        "../scripts/embed_bucket.py"


rule embed_gather:
    input:
        proteins=OUTDIR / "proteins" / "shard={shard}" / "part-0.parquet",
        buckets=gather_bucket_folders,
        model=lambda wildcards: [] if ESM_MODEL()[1] else [ESM_MODEL()[0]],
    output:
        vectors=EMBEDDINGS / "shards" / "shard={shard}.parquet",
        qc=EMBEDDINGS / "qc" / "shard={shard}.parquet",
    log:
        OUTDIR / "logs" / "embed_gather" / "{shard}.log",
    benchmark:
        OUTDIR / "benchmarks" / "embed_gather" / "{shard}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        model=lambda wildcards: ESM_MODEL(),
        settings=EMBEDDING_SETTINGS,
        store=lambda wildcards: str(EMBEDDING_STORE),
    script:
        "../scripts/embed_gather.py"


rule embed_qc:
    input:
        qc=expand(EMBEDDINGS / "qc" / "shard={shard}.parquet", shard=SHARDS),
        # Not read: listed so that vector shards of another plan are removed (see embedding_qc).
        vectors=EMBEDDING_SHARDS,
    output:
        OUTDIR / "qc" / "embeddings.parquet",
    log:
        OUTDIR / "logs" / "embed_qc.log",
    benchmark:
        OUTDIR / "benchmarks" / "embed_qc.tsv"
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/embed_qc.py"


rule embeddings:
    input:
        EMBEDDING_SHARDS,
        OUTDIR / "qc" / "embeddings.parquet",
        # The QC jobs also clear the protein and vector folders of other plans' shards.
        OUTDIR / "qc" / "genomes.parquet",
    localrule: True
