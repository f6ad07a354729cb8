from bacflow.core.logs import logging_to
from bacflow.report import family_sizes

with logging_to(snakemake.log[0]):
    family_sizes(snakemake.input[0], snakemake.output[0])
