from bacflow.bacformer_tables import gather_genomes
from bacflow.logs import logging_to

with logging_to(snakemake.log[0]) as log:
    count = gather_genomes(list(snakemake.input), snakemake.output[0])
    log.info("%d genomes in %s", count, snakemake.output[0])
