from bacflow.core.logs import logging_to
from bacflow.embeddings.tiny import build_esm2, build_esmc

with logging_to(snakemake.log[0]) as log:
    build = {"esm2": build_esm2, "esmc": build_esmc}[snakemake.params.encoder]
    log.info("randomly initialised %s written to %s", snakemake.params.encoder, build(snakemake.output[0]))
