# Always defined, so that `snakemake esm_tiny_model` builds one (of the encoder the run's Bacformer takes) on
# its own; only tiny_model: true makes the stage use it.
rule esm_tiny_model:
    output:
        directory(PLAN.tiny_esm),
    log:
        PLAN.tiny_esm_logs.log("esm_tiny_model"),
    benchmark:
        PLAN.tiny_esm_logs.benchmark("esm_tiny_model")
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        encoder=PLAN.encoder,
    script:
        "../scripts/esm_tiny_model.py"


rule embed_bucket:
    input:
        bucket=PLAN.outdir / "unique" / "bucket={bucket}.parquet",
        shards=PLAN.unique_manifest,
        model=model_files("esm"),
    output:
        directory(PLAN.embeddings / "buckets" / "bucket={bucket}"),
    log:
        PLAN.embedding_logs.log("embed_bucket/{bucket}"),
    benchmark:
        PLAN.embedding_logs.benchmark("embed_bucket/{bucket}")
    conda:
        "../envs/torch.yaml"
    threads: config["threads"]["embeddings"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: PLAN.esm["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: PLAN.esm["runtime"] * attempt,
    params:
        # Which shards get rows: those whose gathered vectors (in this folder) are missing or out of date.
        gathered=str(PLAN.embeddings / "shards"),
        buckets=config["buckets"],
        # (model, revision)
        model=lambda wildcards: planned_model("esm"),
        # Not derived from the outputs: a store may be shared by runs (it must be on a shared
        # filesystem for cluster runs, like the results). A function: `snakemake --lint` refuses a path as a
        # plain param.
        store=lambda wildcards: str(PLAN.embedding_store),
        settings=PLAN.embedding_settings,
    script:
        "../scripts/embed_bucket.py"


# Every gather needs every bucket folder: one manifest stands for them all (as unique_index does).
rule embed_index:
    input:
        PLAN.embedding_buckets,
    output:
        PLAN.embedding_manifest,
    log:
        PLAN.embedding_logs.log("embed_index"),
    benchmark:
        PLAN.embedding_logs.benchmark("embed_index")
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        ids=PLAN.buckets,
    script:
        "../scripts/manifest.py"


rule embed_gather:
    input:
        proteins=PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
        buckets=after_buckets(
            outputs=[
                PLAN.embeddings / "shards" / "shard={shard}.parquet",
                PLAN.embeddings / "qc" / "shard={shard}.parquet",
            ],
            inputs=lambda wildcards: [
                PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
                *model_files("esm")(wildcards),
            ],
            identity=lambda wildcards: PLAN.embedding_identity,
        ),
        model=model_files("esm"),
    output:
        vectors=PLAN.embeddings / "shards" / "shard={shard}.parquet",
        qc=PLAN.embeddings / "qc" / "shard={shard}.parquet",
    log:
        PLAN.embedding_logs.log("embed_gather/{shard}"),
    benchmark:
        PLAN.embedding_logs.benchmark("embed_gather/{shard}")
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        model=lambda wildcards: planned_model("esm"),
        settings=PLAN.embedding_settings,
        store=lambda wildcards: str(PLAN.embedding_store),
        identity=lambda wildcards: PLAN.embedding_identity,
    script:
        "../scripts/embed_gather.py"


rule embed_qc:
    input:
        qc=expand(PLAN.embeddings / "qc" / "shard={shard}.parquet", shard=PLAN.shards),
        # Their metadata only: each QC shard must be of its protein shard's current rows.
        proteins=expand(
            PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=PLAN.shards,
        ),
        # Not read: listed so that vector shards of another plan are removed (see embedding_qc).
        vectors=PLAN.embedding_shards,
        buckets=after_buckets(
            outputs=[PLAN.embedding_qc],
            inputs=expand(
                PLAN.embeddings / "qc" / "shard={shard}.parquet", shard=PLAN.shards
            ),
            identity=lambda wildcards: PLAN.shards_identity,
        ),
    output:
        PLAN.embedding_qc,
    log:
        PLAN.embedding_logs.log("embed_qc"),
    benchmark:
        PLAN.embedding_logs.benchmark("embed_qc")
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        identity=lambda wildcards: PLAN.shards_identity,
    script:
        "../scripts/embed_qc.py"


rule embeddings:
    input:
        PLAN.embedding_shards,
        PLAN.embedding_qc,
        # The QC jobs also clear the protein and vector folders of other plans' shards.
        PLAN.outdir / "qc" / "genomes.parquet",
    localrule: True
