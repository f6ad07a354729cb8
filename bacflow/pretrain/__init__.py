"""Bacformer pretraining: the corpus and its splits, the dataset and length-grouped sampler, masking, the
Hugging Face Trainer with resume and several GPUs, and training metrics."""
