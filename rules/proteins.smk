rule proteins_shard:
    input:
        shard_genome_files,
    output:
        proteins=OUTDIR / "proteins" / "shard={shard}" / "part-0.parquet",
        qc=OUTDIR / "qc" / "shards" / "shard={shard}.parquet",
    log:
        OUTDIR / "logs" / "proteins" / "{shard}.log",
    benchmark:
        OUTDIR / "benchmarks" / "proteins" / "{shard}.tsv"
    conda:
        "../envs/annotate.yaml"
    threads: config["threads"]["proteins"]
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        members=shard_members,
        config=annotation_config(),
    script:
        "../scripts/proteins_shard.py"


rule qc_genomes:
    input:
        qc=expand(OUTDIR / "qc" / "shards" / "shard={shard}.parquet", shard=SHARDS),
        # Not read: listed so that protein shards of another plan are removed (see gather_qc).
        proteins=expand(
            OUTDIR / "proteins" / "shard={shard}" / "part-0.parquet", shard=SHARDS
        ),
    output:
        genomes=OUTDIR / "qc" / "genomes.parquet",
        summary=OUTDIR / "qc" / "summary.txt",
    log:
        OUTDIR / "logs" / "qc_genomes.log",
    benchmark:
        OUTDIR / "benchmarks" / "qc_genomes.tsv"
    localrule: True
    conda:
        "../envs/annotate.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/gather_qc.py"


rule proteins:
    input:
        expand(OUTDIR / "proteins" / "shard={shard}" / "part-0.parquet", shard=SHARDS),
        OUTDIR / "qc" / "genomes.parquet",
    localrule: True
