from bacflow.core.logs import logging_to
from bacflow.core.manifest import read_manifest
from bacflow.embeddings.stage import gather_shard

with logging_to(snakemake.log[0]) as log:
    shard = snakemake.wildcards.shard
    count = gather_shard(
        snakemake.input.proteins,
        read_manifest(snakemake.input.buckets).values(),
        shard,
        snakemake.output.vectors,
        snakemake.output.qc,
        store_root=snakemake.params.store,
        job_identity=snakemake.params.identity,
    )
    log.info("shard %s: %d protein vectors", shard, count)
