from bacflow.core.logs import logging_to
from bacflow.families.stage import family_qc

with logging_to(snakemake.log[0]):
    family_qc(
        snakemake.input.proteins,
        snakemake.input.genomes,
        snakemake.input.families,
        snakemake.output[0],
    )
