rule unique_shard:
    input:
        OUTDIR / "proteins" / "shard={shard}" / "part-0.parquet",
    output:
        OUTDIR / "unique" / "shards" / "shard={shard}.parquet",
    log:
        OUTDIR / "logs" / "unique_shard" / "{shard}.log",
    benchmark:
        OUTDIR / "benchmarks" / "unique_shard" / "{shard}.tsv"
    conda:
        "../envs/annotate.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        buckets=config["buckets"],
    script:
        "../scripts/unique_shard.py"


rule unique_bucket:
    input:
        expand(OUTDIR / "unique" / "shards" / "shard={shard}.parquet", shard=SHARDS),
    output:
        OUTDIR / "unique" / "bucket={bucket}.parquet",
    log:
        OUTDIR / "logs" / "unique_bucket" / "{bucket}.log",
    benchmark:
        OUTDIR / "benchmarks" / "unique_bucket" / "{bucket}.tsv"
    conda:
        "../envs/annotate.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    script:
        "../scripts/unique_bucket.py"
