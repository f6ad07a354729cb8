if PLAN.family_vocab:

    rule families_assign:
        input:
            buckets=PLAN.bucket_files,
            vocab=PLAN.vocab_files,
        output:
            families=PLAN.families,
        log:
            PLAN.logs.log("families_assign"),
        benchmark:
            PLAN.logs.benchmark("families_assign")
        conda:
            "../envs/mmseqs.yaml"
        threads: config["threads"]["families"]
        resources:
            mem_mb=lambda wildcards, attempt: config["families"]["mem_mb"] * attempt,
            runtime=lambda wildcards, attempt: 120 * attempt,
        params:
            families=PLAN.family_params.as_dict(),
            vocab=PLAN.family_vocab,
        script:
            "../scripts/families_assign.py"

else:

    rule families_cluster:
        input:
            buckets=PLAN.bucket_files,
        output:
            families=PLAN.families,
            vocab=directory(PLAN.outdir / "families" / "vocab"),
        log:
            PLAN.logs.log("families_cluster"),
        benchmark:
            PLAN.logs.benchmark("families_cluster")
        conda:
            "../envs/mmseqs.yaml"
        threads: config["threads"]["families"]
        resources:
            mem_mb=lambda wildcards, attempt: config["families"]["mem_mb"] * attempt,
            runtime=lambda wildcards, attempt: 240 * attempt,
        params:
            families=PLAN.family_params.as_dict(),
        script:
            "../scripts/families_cluster.py"


rule families_qc:
    input:
        proteins=expand(
            PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
            shard=PLAN.shards,
        ),
        genomes=PLAN.outdir / "qc" / "genomes.parquet",
        families=PLAN.families,
    output:
        PLAN.outdir / "qc" / "families.parquet",
    log:
        PLAN.logs.log("families_qc"),
    benchmark:
        PLAN.logs.benchmark("families_qc")
    conda:
        "../envs/mmseqs.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    script:
        "../scripts/families_qc.py"


rule families:
    input:
        PLAN.families,
        PLAN.outdir / "qc" / "families.parquet",
    localrule: True
