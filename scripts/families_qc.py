from bacflow.families.stage import family_qc
from bacflow.core.logs import logging_to

with logging_to(snakemake.log[0]):
    family_qc(
        snakemake.input.proteins,
        snakemake.input.genomes,
        snakemake.input.families,
        snakemake.output[0],
    )
