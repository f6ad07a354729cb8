from bacflow.bacformer.stage import BacformerSettings, bacformer_shard
from bacflow.core.logs import logging_to

with logging_to(snakemake.log[0]) as log:
    model, revision = snakemake.params.model
    counts = bacformer_shard(
        snakemake.input.vectors,
        snakemake.input.proteins,
        snakemake.output.proteins,
        snakemake.output.genomes,
        shard=snakemake.wildcards.shard,
        model=model,
        revision=revision,
        name=snakemake.params.name,
        settings=BacformerSettings(**snakemake.params.settings),
        threads=snakemake.threads,
        job_identity=snakemake.params.identity,
    )
    log.info("shard %s: %s", snakemake.wildcards.shard, counts)
