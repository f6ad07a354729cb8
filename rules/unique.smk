# Every bucket needs every shard's table: one manifest stands for them all (bacflow/core/manifest.py), so
# the DAG has shards + buckets edges, not shards x buckets (planning a million genomes took minutes).
rule unique_index:
    input:
        expand(
            PLAN.outdir / "unique" / "shards" / "shard={shard}.parquet",
            shard=PLAN.shards,
        ),
    output:
        PLAN.unique_manifest,
    log:
        PLAN.outdir / "logs" / "unique_index.log",
    benchmark:
        PLAN.outdir / "benchmarks" / "unique_index.tsv"
    localrule: True
    conda:
        "../envs/annotate.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        ids=list(PLAN.shards),
    script:
        "../scripts/manifest.py"


rule unique_bucket:
    input:
        PLAN.unique_manifest,
    output:
        PLAN.outdir / "unique" / "bucket={bucket}.parquet",
    log:
        PLAN.outdir / "logs" / "unique_bucket" / "{bucket}.log",
    benchmark:
        PLAN.outdir / "benchmarks" / "unique_bucket" / "{bucket}.tsv"
    conda:
        "../envs/annotate.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        buckets=config["buckets"],
    script:
        "../scripts/unique_bucket.py"
