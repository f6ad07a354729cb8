from pathlib import Path

from bacflow.core.logs import logging_to
from bacflow.core.manifest import read_manifest
from bacflow.embeddings.stage import EmbeddingSettings, embed_bucket

with logging_to(snakemake.log[0]) as log:
    model, revision = snakemake.params.model
    shards = read_manifest(snakemake.input.shards)
    gathered = Path(snakemake.params.gathered)
    # checkpoint_sequences comes from the config, not params: it changes no vector, so it must not re-run jobs.
    checkpoint = snakemake.config["embeddings"]["checkpoint_sequences"]
    counts = embed_bucket(
        snakemake.input.bucket,
        shards,
        snakemake.output[0],
        gathered_paths={shard: gathered / f"shard={shard}.parquet" for shard in shards},
        bucket=int(snakemake.wildcards.bucket),
        n_buckets=snakemake.params.buckets,
        model=model,
        revision=revision,
        store_root=snakemake.params.store,
        settings=EmbeddingSettings(**snakemake.params.settings, checkpoint_sequences=checkpoint),
        threads=snakemake.threads,
    )
    log.info("bucket %s: %s", snakemake.wildcards.bucket, counts)
