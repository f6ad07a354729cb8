"""The ``proteins`` stage: reading assemblies (FASTA, GenBank, GFF3), gene calls with pyrodigal or the file's
own CDS, ordered protein tables with per-genome QC, and the cohort's distinct sequences by bucket."""
