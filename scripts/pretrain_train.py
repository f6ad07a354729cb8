from bacflow.core.logs import logging_to
from bacflow.pretrain.trainer import PretrainParams, launch

with logging_to(snakemake.log[0]):
    params = PretrainParams.from_config(snakemake.params.pretrain)
    launch(
        snakemake.input.corpus,
        snakemake.params.run_dir,
        params,
        snakemake.params.pretrain["gpus"],
        snakemake.params.pretrain["nodes"],
        snakemake.threads,
    )
