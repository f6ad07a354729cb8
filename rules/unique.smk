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
        PLAN.logs.log("unique_index"),
    benchmark:
        PLAN.logs.benchmark("unique_index")
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
        PLAN.logs.log("unique_bucket/{bucket}"),
    benchmark:
        PLAN.logs.benchmark("unique_bucket/{bucket}")
    conda:
        "../envs/annotate.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        buckets=config["buckets"],
    script:
        "../scripts/unique_bucket.py"
