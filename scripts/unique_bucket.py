from bacflow.core.logs import logging_to
from bacflow.core.manifest import read_manifest
from bacflow.proteins.unique import gather_bucket

with logging_to(snakemake.log[0]) as log:
    bucket = int(snakemake.wildcards.bucket)
    shards = read_manifest(snakemake.input[0]).values()
    count = gather_bucket(shards, bucket, snakemake.params.buckets, snakemake.output[0])
    log.info("bucket %04d: %d distinct sequences", bucket, count)
