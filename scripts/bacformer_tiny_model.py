from bacflow.bacformer.model import build_tiny_bacformer
from bacflow.core.logs import logging_to

with logging_to(snakemake.log[0]) as log:
    family = snakemake.params.family
    folder = build_tiny_bacformer(snakemake.output[0], snakemake.params.hidden_size, family=family)
    log.info("randomly initialised Bacformer %s written to %s", family, folder)
