"""The published Bacformer's fixed numbers, without PyTorch, so that every stage can use them: token kinds,
the label of untargeted positions, the separator id at inference, and the limits it was trained with."""

#: Token kinds (values of ``special_tokens_mask``); a token of kind PROT_EMB carries a protein vector.
SPECIAL_TOKENS = {"PAD": 0, "MASK": 1, "CLS": 2, "SEP": 3, "PROT_EMB": 4, "END": 5}

#: Label value of positions without a target (``torch.nn.functional.cross_entropy``'s ``ignore_index``), and
#: the family id of an unlabelled protein in the pretraining corpus.
IGNORE_INDEX = -100

#: The separator id of the published checkpoints at inference: CLS's id, as the reference's inference helpers
#: use it (the reference's issue #27); pretraining uses SEP.
INFERENCE_SEP_TOKEN_ID = SPECIAL_TOKENS["CLS"]

#: Bacformer was trained on at most this many tokens per genome (CLS, separators and END included) and this
#: many contigs (the rest share the last contig's token type).
MAX_N_PROTEINS = 6000
MAX_N_CONTIGS = 1000
