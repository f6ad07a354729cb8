# Always defined, so that `snakemake bacformer_tiny_model` builds one on its own; only tiny_model: true makes the
# stage use it.
rule bacformer_tiny_model:
    output:
        directory(PLAN.tiny_bacformer),
    log:
        PLAN.tiny_bacformer_logs.log("bacformer_tiny_model"),
    benchmark:
        PLAN.tiny_bacformer_logs.benchmark("bacformer_tiny_model")
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        hidden_size=lambda wildcards: PLAN.vector_width,
        family=lambda wildcards: PLAN.bacformer_family.name,
    script:
        "../scripts/bacformer_tiny_model.py"


rule bacformer_shard:
    input:
        vectors=PLAN.embeddings / "shards" / "shard={shard}.parquet",
        proteins=PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
        model=model_files("bacformer"),
        buckets=after_buckets(
            outputs=[
                PLAN.bacformer_dir / "proteins" / "shard={shard}" / "part-0.parquet",
                PLAN.bacformer_dir / "genome_shards" / "shard={shard}.parquet",
            ],
            inputs=lambda wildcards: [
                PLAN.embeddings / "shards" / "shard={shard}.parquet",
                PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
                *model_files("bacformer")(wildcards),
            ],
            identity=lambda wildcards: PLAN.bacformer_identity,
        ),
    output:
        proteins=PLAN.bacformer_dir / "proteins" / "shard={shard}" / "part-0.parquet",
        genomes=PLAN.bacformer_dir / "genome_shards" / "shard={shard}.parquet",
    log:
        PLAN.bacformer_logs.log("{shard}"),
    benchmark:
        PLAN.bacformer_logs.benchmark("{shard}")
    conda:
        "../envs/torch.yaml"
    threads: config["threads"]["bacformer"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: PLAN.bacformer["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: PLAN.bacformer["runtime"] * attempt,
    params:
        # (model, revision): one function per job, not two (each costs planning time for every shard).
        model=lambda wildcards: planned_model("bacformer"),
        name=PLAN.bacformer_name,
        settings=PLAN.bacformer_params,
        identity=lambda wildcards: PLAN.bacformer_identity,
    script:
        "../scripts/bacformer_shard.py"


rule bacformer_genomes:
    input:
        genomes=expand(
            PLAN.bacformer_dir / "genome_shards" / "shard={shard}.parquet",
            shard=PLAN.shards,
        ),
        # Not read: listed so that protein shards of another plan are removed (see gather_genomes).
        proteins=expand(
            PLAN.bacformer_dir / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=PLAN.shards,
        ),
        # Their metadata only: each genome shard must be of its protein shard's current rows.
        sources=expand(
            PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=PLAN.shards,
        ),
        buckets=after_buckets(
            outputs=[PLAN.bacformer_dir / "genomes.parquet"],
            inputs=expand(
                PLAN.bacformer_dir / "genome_shards" / "shard={shard}.parquet",
                shard=PLAN.shards,
            ),
            identity=lambda wildcards: PLAN.shards_identity,
        ),
    output:
        PLAN.bacformer_dir / "genomes.parquet",
    log:
        PLAN.bacformer_logs.log("genomes"),
    benchmark:
        PLAN.bacformer_logs.benchmark("genomes")
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        identity=lambda wildcards: PLAN.shards_identity,
    script:
        "../scripts/bacformer_genomes.py"


rule bacformer:
    input:
        expand(
            PLAN.bacformer_dir / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=PLAN.shards,
        ),
        PLAN.bacformer_dir / "genomes.parquet",
        # The QC jobs also clear the protein and vector folders of other plans' shards.
        PLAN.outdir / "qc" / "genomes.parquet",
        PLAN.embedding_qc,
    localrule: True
