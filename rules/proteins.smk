# The genome files are no inputs: the members' params hold each file's size and mtime (see shard_members).
rule proteins_shard:
    output:
        proteins=PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
        qc=PLAN.outdir / "qc" / "shards" / "shard={shard}.parquet",
        # The shard's distinct sequences, for the bucket jobs (rules/unique.smk): made here, not by a job of
        # their own, as a second job per shard would add a quarter to the planning of a million genomes.
        unique=PLAN.outdir / "unique" / "shards" / "shard={shard}.parquet",
    log:
        PLAN.logs.log("proteins/{shard}"),
    benchmark:
        PLAN.logs.benchmark("proteins/{shard}")
    conda:
        "../envs/annotate.yaml"
    threads: config["threads"]["proteins"]
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        members=shard_members,
        config=PLAN.annotation_config(),
    script:
        "../scripts/proteins_shard.py"


rule qc_genomes:
    input:
        qc=expand(
            PLAN.outdir / "qc" / "shards" / "shard={shard}.parquet", shard=PLAN.shards
        ),
        # Not read: listed so that protein shards of another plan are removed (see gather_qc).
        proteins=expand(
            PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=PLAN.shards,
        ),
    output:
        genomes=PLAN.outdir / "qc" / "genomes.parquet",
        summary=PLAN.outdir / "qc" / "summary.txt",
    log:
        PLAN.logs.log("qc_genomes"),
    benchmark:
        PLAN.logs.benchmark("qc_genomes")
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
        expand(
            PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=PLAN.shards,
        ),
        PLAN.outdir / "qc" / "genomes.parquet",
    localrule: True
