"""The ``bacformer`` stage: the Hugging Face-style Bacformer model (`modeling_bacformer`), loading
checkpoints, genome inputs (special tokens, contigs, windows), shard jobs that write contextual protein
and genome embeddings, and their tables."""
