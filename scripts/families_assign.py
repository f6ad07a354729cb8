from bacflow.core.logs import logging_to
from bacflow.families.stage import FamilyParams, assign_families

with logging_to(snakemake.log[0]):
    assign_families(
        snakemake.input.buckets,
        snakemake.params.vocab,
        snakemake.output.families,
        FamilyParams.from_config(snakemake.params.families),
        threads=snakemake.threads,
        memory_mb=snakemake.resources.mem_mb,
        tmpdir=snakemake.resources.tmpdir,
    )
