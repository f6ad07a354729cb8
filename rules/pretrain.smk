from bacflow.pretrain.data import SPLITS, assign_splits, required_splits, splits_drawn

PRETRAIN = config["pretrain"]
PRETRAIN_DIR = OUTDIR / "pretrain" / PRETRAIN["run"]
PRETRAIN_DATA = PRETRAIN_DIR / "data"
PRETRAIN_PARTS = {
    split: expand(PRETRAIN_DATA / split / "part-{shard}.parquet", shard=SHARDS)
    for split in SPLITS
}
# Splits come from the whole sheet (a group's split may be named on any of its rows), so they are worked
# out here, before any job, and handed to each shard job as parameters.
try:
    PRETRAIN_SPLITS = assign_splits(
        SAMPLES,
        PRETRAIN["val_fraction"],
        PRETRAIN["test_fraction"],
        PRETRAIN["split_seed"],
    )
except InputError as error:
    raise WorkflowError(str(error)) from None
# Each shard's genomes with kind and split: a change of either re-runs the shard (params trigger).
PRETRAIN_MEMBERS = {
    shard: [
        {
            "genome_id": s.genome_id,
            "kind": s.kind,
            "split": PRETRAIN_SPLITS[s.genome_id],
        }
        for s in samples
    ]
    for shard, samples in SHARDS.items()
}


rule pretrain_corpus_shard:
    input:
        vectors=EMBEDDINGS / "shards" / "shard={shard}.parquet",
        families=FAMILIES,
    output:
        train=PRETRAIN_DATA / "train" / "part-{shard}.parquet",
        val=PRETRAIN_DATA / "val" / "part-{shard}.parquet",
        test=PRETRAIN_DATA / "test" / "part-{shard}.parquet",
    log:
        OUTDIR / "logs" / "pretrain_corpus" / "{shard}.log",
    benchmark:
        OUTDIR / "benchmarks" / "pretrain_corpus" / "{shard}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        members=lambda wildcards: PRETRAIN_MEMBERS[wildcards.shard],
    script:
        "../scripts/pretrain_corpus_shard.py"


rule pretrain_corpus:
    input:
        **PRETRAIN_PARTS,
    output:
        PRETRAIN_DATA / "corpus.json",
    log:
        OUTDIR / "logs" / "pretrain_corpus.log",
    benchmark:
        OUTDIR / "benchmarks" / "pretrain_corpus.tsv"
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        vocab_size=config["families"]["vocab_size"],
        required=required_splits(SAMPLES, PRETRAIN_SPLITS, PRETRAIN["test_fraction"]),
        drawn=splits_drawn(SAMPLES),
    script:
        "../scripts/pretrain_corpus.py"


rule pretrain_train:
    input:
        corpus=PRETRAIN_DATA / "corpus.json",
        parts=[path for paths in PRETRAIN_PARTS.values() for path in paths],
    output:
        model=directory(PRETRAIN_DIR / "model"),
        metrics=PRETRAIN_DIR / "metrics.csv",
        plot=report(
            PRETRAIN_DIR / "metrics.svg",
            caption="../report/pretrain_metrics.rst",
            category="Pretraining",
        ),
    log:
        OUTDIR / "logs" / "pretrain_train.log",
    benchmark:
        OUTDIR / "benchmarks" / "pretrain_train.tsv"
    conda:
        "../envs/torch.yaml"
    # Data-loader workers and the training process, for each GPU; given fewer (--cores), the job runs
    # fewer workers (PretrainParams.within_threads).
    threads: max(PRETRAIN["gpus"], 1) * (PRETRAIN["dataloader_workers"] + 1)
    resources:
        # The executor plugin asks SLURM for `gpu` GPUs in all (--gpus) on `nodes` nodes.
        gpu=PRETRAIN["gpus"] * PRETRAIN["nodes"],
        nodes=PRETRAIN["nodes"],
        mem_mb=lambda wildcards, attempt: PRETRAIN["mem_mb"] * attempt,
        # A job stopped at its time limit resumes from its newest checkpoint when it is retried.
        runtime=lambda wildcards, attempt: PRETRAIN["runtime"] * attempt,
    params:
        pretrain=PRETRAIN,
        run_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    script:
        "../scripts/pretrain_train.py"


rule pretrain:
    input:
        PRETRAIN_DIR / "model",
        PRETRAIN_DIR / "metrics.csv",
        PRETRAIN_DIR / "metrics.svg",
    localrule: True
