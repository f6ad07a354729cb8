from bacflow.core.logs import logging_to
from bacflow.families.stage import FamilyParams, build_families

with logging_to(snakemake.log[0]):
    build_families(
        snakemake.input.buckets,
        snakemake.output.families,
        snakemake.output.vocab,
        FamilyParams.from_config(snakemake.params.families),
        threads=snakemake.threads,
        memory_mb=snakemake.resources.mem_mb,
        tmpdir=snakemake.resources.tmpdir,
    )
