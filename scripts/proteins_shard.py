from bacflow.core.logs import logging_to
from bacflow.proteins.stage import proteins_shard

with logging_to(snakemake.log[0]):
    proteins_shard(
        members=snakemake.params.members,
        config=snakemake.params.config,
        shard=snakemake.wildcards.shard,
        proteins_path=snakemake.output.proteins,
        qc_path=snakemake.output.qc,
        unique_path=snakemake.output.unique,
        threads=snakemake.threads,
    )
