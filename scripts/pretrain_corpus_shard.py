from bacflow.core.logs import logging_to
from bacflow.pretrain.data import SPLITS, build_corpus_shard

with logging_to(snakemake.log[0]):
    outputs = {split: snakemake.output[split] for split in SPLITS}
    build_corpus_shard(
        snakemake.input.vectors,
        snakemake.input.families,
        snakemake.params.members,
        outputs,
        proteins_path=snakemake.input.proteins,
        job_identity=snakemake.params.identity,
    )
