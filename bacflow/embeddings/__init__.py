"""The ``embeddings`` stage: ESM-2 protein embeddings. The recipe and its store, bacflow's ESM-2 forward pass
and batching, bucket jobs that embed what the store lacks, shard jobs that gather vectors back, QC, and
the tiny random ESM-2 for tests and the demo."""
