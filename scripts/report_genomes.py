from bacflow.core.logs import logging_to
from bacflow.report import proteins_per_genome, qc_flags

with logging_to(snakemake.log[0]):
    proteins_per_genome(
        snakemake.input.qc, snakemake.input.bacformer, snakemake.output.proteins, snakemake.params.limit
    )
    qc_flags(snakemake.input.qc, snakemake.input.bacformer, snakemake.output.flags)
