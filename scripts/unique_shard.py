from bacflow.core.logs import logging_to
from bacflow.proteins.unique import shard_unique

with logging_to(snakemake.log[0]):
    shard_unique(snakemake.input[0], snakemake.output[0], snakemake.params.buckets)
