from bacflow.core.logs import logging_to
from bacflow.embeddings.tiny import build_esm2

with logging_to(snakemake.log[0]) as log:
    log.info("randomly initialised ESM-2 written to %s", build_esm2(snakemake.output[0]))
