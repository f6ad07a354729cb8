"""What every stage shares: errors, logs, parquet tables with atomic writes, provenance, text input, sequence
hashes, the sample sheet and the config/sheet schemas, scratch folders, and finding models and devices.
Nothing here imports PyTorch at import time."""
