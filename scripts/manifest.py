from bacflow.core.logs import logging_to
from bacflow.core.manifest import write_manifest

with logging_to(snakemake.log[0]) as log:
    write_manifest(dict(zip(snakemake.params.ids, snakemake.input, strict=True)), snakemake.output[0])
    log.info("%s: %d files", snakemake.output[0], len(snakemake.params.ids))
