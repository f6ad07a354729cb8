from bacflow.core.logs import logging_to
from bacflow.proteins.stage import gather_qc

with logging_to(snakemake.log[0]) as log:
    log.info(
        gather_qc(snakemake.input.qc, snakemake.output.genomes, snakemake.output.summary, snakemake.input.proteins)
    )
