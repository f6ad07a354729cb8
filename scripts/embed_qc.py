from bacflow.core.logs import logging_to
from bacflow.embeddings.stage import embedding_qc

with logging_to(snakemake.log[0]) as log:
    count = embedding_qc(
        snakemake.input.qc,
        snakemake.output[0],
        snakemake.input.vectors,
        proteins_paths=snakemake.input.proteins,
        job_identity=snakemake.params.identity,
    )
    log.info("%d genomes", count)
