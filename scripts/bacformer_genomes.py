from bacflow.bacformer.tables import gather_genomes
from bacflow.core.logs import logging_to

with logging_to(snakemake.log[0]) as log:
    count = gather_genomes(
        snakemake.input.genomes,
        snakemake.output[0],
        snakemake.input.proteins,
        sources=snakemake.input.sources,
        job_identity=snakemake.params.identity,
    )
    log.info("%d genomes in %s", count, snakemake.output[0])
