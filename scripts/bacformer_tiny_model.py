from bacflow.bacformer.model import build_tiny_bacformer
from bacflow.core.logs import logging_to

with logging_to(snakemake.log[0]) as log:
    folder = build_tiny_bacformer(snakemake.output[0], snakemake.params.hidden_size)
    log.info("randomly initialised Bacformer written to %s", folder)
