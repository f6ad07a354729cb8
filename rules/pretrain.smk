rule pretrain_corpus_shard:
    input:
        vectors=PLAN.embeddings / "shards" / "shard={shard}.parquet",
        families=PLAN.families,
        # Its metadata only: the vectors must be of the shard's current proteins.
        proteins=PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
        buckets=after_buckets(
            outputs=[
                PLAN.pretrain_data / split / "part-{shard}.parquet"
                for split in ("train", "val", "test")
            ],
            inputs=[
                PLAN.embeddings / "shards" / "shard={shard}.parquet",
                PLAN.families,
                PLAN.outdir / "proteins" / "shard={shard}" / "part-0.parquet",
            ],
            identity=lambda wildcards: PLAN.pretrain_members_identity(wildcards.shard),
        ),
    output:
        train=PLAN.pretrain_data / "train" / "part-{shard}.parquet",
        val=PLAN.pretrain_data / "val" / "part-{shard}.parquet",
        test=PLAN.pretrain_data / "test" / "part-{shard}.parquet",
    log:
        PLAN.pretrain_logs.log("pretrain_corpus/{shard}"),
    benchmark:
        PLAN.pretrain_logs.benchmark("pretrain_corpus/{shard}")
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        members=lambda wildcards: PLAN.pretrain_members(wildcards.shard),
        identity=lambda wildcards: PLAN.pretrain_members_identity(wildcards.shard),
    script:
        "../scripts/pretrain_corpus_shard.py"


rule pretrain_corpus:
    input:
        **PLAN.pretrain_parts,
        buckets=after_buckets(
            outputs=[PLAN.pretrain_data / "corpus.json"],
            inputs=[path for paths in PLAN.pretrain_parts.values() for path in paths],
        ),
    output:
        PLAN.pretrain_data / "corpus.json",
    log:
        PLAN.pretrain_logs.log("pretrain_corpus"),
    benchmark:
        PLAN.pretrain_logs.benchmark("pretrain_corpus")
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        vocab_size=config["families"]["vocab_size"],
        required=PLAN.required_splits,
        drawn=PLAN.splits_drawn,
    script:
        "../scripts/pretrain_corpus.py"


rule pretrain_train:
    input:
        corpus=PLAN.pretrain_data / "corpus.json",
        parts=[path for paths in PLAN.pretrain_parts.values() for path in paths],
        buckets=after_buckets(
            outputs=[PLAN.pretrain_model_file, PLAN.pretrain_dir / "metrics.csv"],
            inputs=[
                PLAN.pretrain_data / "corpus.json",
                *(path for paths in PLAN.pretrain_parts.values() for path in paths),
            ],
        ),
    # update(): Snakemake deletes other outputs before their job runs, so a rerun (new genomes, more steps) that
    # failed would leave the run without its model. The job writes all three beside their places and renames them
    # into place at its end; Snakemake copies the declared files aside and puts them back if the job fails. The
    # model folder is declared through one small file of it: a declared folder would be copied whole, weights and
    # all, and the copy that a killed Snakemake leaves behind makes the next job fail (copytree into it).
    output:
        model=update(PLAN.pretrain_model_file),
        metrics=update(PLAN.pretrain_dir / "metrics.csv"),
        plot=report(
            update(PLAN.pretrain_dir / "metrics.svg"),
            caption="../report/pretrain_metrics.rst",
            category="Pretraining",
        ),
    log:
        PLAN.pretrain_logs.log("pretrain_train"),
    benchmark:
        PLAN.pretrain_logs.benchmark("pretrain_train")
    conda:
        "../envs/torch.yaml"
    # Data-loader workers and the training process, for each GPU; given fewer (--cores), the job runs
    # fewer workers (PretrainParams.within_threads).
    threads: max(PLAN.pretrain["gpus"], 1) * (PLAN.pretrain["dataloader_workers"] + 1)
    resources:
        # The executor plugin asks SLURM for `gpu` GPUs in all (--gpus) on `nodes` nodes.
        gpu=PLAN.pretrain["gpus"] * PLAN.pretrain["nodes"],
        nodes=PLAN.pretrain["nodes"],
        mem_mb=lambda wildcards, attempt: PLAN.pretrain["mem_mb"] * attempt,
        # A job stopped at its time limit resumes from its newest checkpoint when it is retried.
        runtime=lambda wildcards, attempt: PLAN.pretrain["runtime"] * attempt,
    params:
        pretrain=lambda wildcards: PLAN.pretrain_params,
        run_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    script:
        "../scripts/pretrain_train.py"


rule pretrain:
    input:
        PLAN.pretrain_model_file,
        PLAN.pretrain_dir / "metrics.csv",
        PLAN.pretrain_dir / "metrics.svg",
    localrule: True
