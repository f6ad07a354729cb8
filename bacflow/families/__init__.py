"""The ``families`` stage: MMseqs2 protein families of the cohort's distinct sequences, the frozen
vocabulary, assigning a new cohort to a vocabulary, and per-genome family QC."""
