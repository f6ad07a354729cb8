include: "bacformer_model.smk"


# Always defined, so that `snakemake bacformer_tiny_model` builds one on its own; only tiny_model: true makes the
# stage use it.
rule bacformer_tiny_model:
    output:
        directory(TINY_BACFORMER),
    log:
        OUTDIR / "logs" / "bacformer_tiny_model.log",
    benchmark:
        OUTDIR / "benchmarks" / "bacformer_tiny_model.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        hidden_size=lambda wildcards: tiny_bacformer_width(),
    script:
        "../scripts/bacformer_tiny_model.py"


rule bacformer_shard:
    input:
        vectors=EMBEDDINGS / "shards" / "shard={shard}.parquet",
        proteins=OUTDIR / "proteins" / "shard={shard}" / "part-0.parquet",
        model=bacformer_model_files,
    output:
        proteins=BACFORMER_DIR / "proteins" / "shard={shard}" / "part-0.parquet",
        genomes=BACFORMER_DIR / "genome_shards" / "shard={shard}.parquet",
    log:
        OUTDIR / "logs" / "bacformer" / BACFORMER_NAME / "{shard}.log",
    benchmark:
        OUTDIR / "benchmarks" / "bacformer" / BACFORMER_NAME / "{shard}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: config["threads"]["bacformer"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: BACFORMER["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: BACFORMER["runtime"] * attempt,
    params:
        model=lambda wildcards: bacformer_model()[0],
        revision=lambda wildcards: bacformer_model()[1],
        name=BACFORMER_NAME,
        settings=dataclasses.asdict(BACFORMER_SETTINGS),
    script:
        "../scripts/bacformer_shard.py"


rule bacformer_genomes:
    input:
        genomes=expand(
            BACFORMER_DIR / "genome_shards" / "shard={shard}.parquet", shard=SHARDS
        ),
        # Not read: listed so that protein shards of another plan are removed (see gather_genomes).
        proteins=expand(
            BACFORMER_DIR / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=SHARDS,
        ),
    output:
        BACFORMER_DIR / "genomes.parquet",
    log:
        OUTDIR / "logs" / "bacformer" / BACFORMER_NAME / "genomes.log",
    benchmark:
        OUTDIR / "benchmarks" / "bacformer" / BACFORMER_NAME / "genomes.tsv"
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/bacformer_genomes.py"


rule bacformer:
    input:
        expand(
            BACFORMER_DIR / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=SHARDS,
        ),
        BACFORMER_DIR / "genomes.parquet",
        # The QC jobs also clear the protein and vector folders of other plans' shards.
        OUTDIR / "qc" / "genomes.parquet",
        OUTDIR / "qc" / "embeddings.parquet",
    localrule: True
