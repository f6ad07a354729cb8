from bacflow.families.stage import VOCAB_FILES, FamilyParams, check_vocab

FAMILY_PARAMS = FamilyParams.from_config(config["families"])
FAMILY_VOCAB = config["families"]["vocab"]
FAMILIES = OUTDIR / "families" / "families.parquet"
BUCKET_FILES = expand(OUTDIR / "unique" / "bucket={bucket}.parquet", bucket=BUCKETS)


if FAMILY_VOCAB:
    # A missing vocabulary, or one built with other parameters, fails before any job runs.
    try:
        check_vocab(FAMILY_VOCAB, FAMILY_PARAMS)
    except InputError as error:
        raise WorkflowError(str(error)) from None

    rule families_assign:
        input:
            buckets=BUCKET_FILES,
            vocab=[os.path.join(FAMILY_VOCAB, name) for name in VOCAB_FILES],
        output:
            families=FAMILIES,
        log:
            OUTDIR / "logs" / "families_assign.log",
        benchmark:
            OUTDIR / "benchmarks" / "families_assign.tsv"
        conda:
            "../envs/mmseqs.yaml"
        threads: config["threads"]["families"]
        resources:
            mem_mb=lambda wildcards, attempt: config["families"]["mem_mb"] * attempt,
            runtime=lambda wildcards, attempt: 120 * attempt,
        params:
            families=FAMILY_PARAMS.as_dict(),
            vocab=FAMILY_VOCAB,
        script:
            "../scripts/families_assign.py"

else:

    rule families_cluster:
        input:
            buckets=BUCKET_FILES,
        output:
            families=FAMILIES,
            vocab=directory(OUTDIR / "families" / "vocab"),
        log:
            OUTDIR / "logs" / "families_cluster.log",
        benchmark:
            OUTDIR / "benchmarks" / "families_cluster.tsv"
        conda:
            "../envs/mmseqs.yaml"
        threads: config["threads"]["families"]
        resources:
            mem_mb=lambda wildcards, attempt: config["families"]["mem_mb"] * attempt,
            runtime=lambda wildcards, attempt: 240 * attempt,
        params:
            families=FAMILY_PARAMS.as_dict(),
        script:
            "../scripts/families_cluster.py"


rule families_qc:
    input:
        proteins=expand(
            OUTDIR / "proteins" / "shard={shard}" / "part-0.parquet", shard=SHARDS
        ),
        genomes=OUTDIR / "qc" / "genomes.parquet",
        families=FAMILIES,
    output:
        OUTDIR / "qc" / "families.parquet",
    log:
        OUTDIR / "logs" / "families_qc.log",
    benchmark:
        OUTDIR / "benchmarks" / "families_qc.tsv"
    conda:
        "../envs/mmseqs.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    script:
        "../scripts/families_qc.py"


rule families:
    input:
        FAMILIES,
        OUTDIR / "qc" / "families.parquet",
    localrule: True
