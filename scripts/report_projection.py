from bacflow.core.logs import logging_to
from bacflow.report import genome_projection

with logging_to(snakemake.log[0]):
    genome_projection(snakemake.input.genomes, snakemake.input.qc, snakemake.output[0])
