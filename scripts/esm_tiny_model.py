from bacflow.logs import logging_to
from bacflow.tiny_models import build_esm2

with logging_to(snakemake.log[0]) as log:
    log.info("randomly initialised ESM-2 written to %s", build_esm2(snakemake.output[0]))
