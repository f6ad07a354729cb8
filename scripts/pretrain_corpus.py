from bacflow.core.logs import logging_to
from bacflow.pretrain.data import SPLITS, summarize_corpus

with logging_to(snakemake.log[0]):
    parts = {split: snakemake.input[split] for split in SPLITS}
    summarize_corpus(
        parts, snakemake.params.vocab_size, snakemake.params.required, snakemake.params.drawn, snakemake.output[0]
    )
