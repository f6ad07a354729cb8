"""Randomly initialised models with real architectures, built offline, for tests, the demo and benchmarks.

``python -m bacflow.embeddings.tiny esm2 OUT`` writes a small ESM-2 (``EsmForMaskedLM``, 2 layers) in Hugging
Face format: ``config.json``, ``model.safetensors``, and the real ESM-2 tokenizer (its 33-token vocabulary,
written here, so nothing is downloaded). ``--geometry t12_35M`` gives the geometry of
``facebook/esm2_t12_35M_UR50D`` instead (12 layers, hidden 480, 20 heads), for speed measurements.

``python -m bacflow.embeddings.tiny esmc OUT`` writes a small ESM-C in the ESM++ checkpoint layout
(`bacflow.embeddings.modeling_esmc`, 2 layers) with ESM-C's real tokenizer (``tokenizer.json``);
``--geometry l6_w320`` (6 layers, width 320) is for speed measurements, ``300M`` is ESM-C 300M's geometry.

The weights are random: the vectors such a model gives carry no biological meaning. Its ``config.json``
says so (``bacflow_random_init``), and bacflow logs a warning whenever it loads one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

#: ESM-2's alphabet in token-id order (fair-esm ``Alphabet``: 4 prefix tokens, 25 residue codes, gap
#: characters, then ``<null_1>`` and ``<mask>``), as in the hub checkpoints' ``vocab.txt``.
ESM2_VOCAB = ("<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>")

#: What every ESM-2 checkpoint shares (from ``facebook/esm2_t12_35M_UR50D``'s ``config.json``).
_ESM2_COMMON = dict(
    vocab_size=len(ESM2_VOCAB),
    pad_token_id=ESM2_VOCAB.index("<pad>"),
    mask_token_id=ESM2_VOCAB.index("<mask>"),
    max_position_embeddings=1026,
    position_embedding_type="rotary",
    token_dropout=True,
    emb_layer_norm_before=False,
    layer_norm_eps=1e-5,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

#: Sizes: "tiny" keeps the real head width (24) and is fast enough for every test; "t12_35M" is
#: facebook/esm2_t12_35M_UR50D's.
ESM2_GEOMETRIES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=48, num_attention_heads=2, intermediate_size=96),
    "t12_35M": dict(num_hidden_layers=12, hidden_size=480, num_attention_heads=20, intermediate_size=1920),
}


def build_esm2(out: str | Path, geometry: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised ESM-2 with the real tokenizer to the folder `out`; return it."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(ESM2_VOCAB) + "\n")
    EsmTokenizer(str(vocab)).save_pretrained(out)
    config = EsmConfig(**_ESM2_COMMON, **ESM2_GEOMETRIES[geometry], bacflow_random_init=True)
    torch.manual_seed(seed)
    EsmForMaskedLM(config).save_pretrained(out)
    (out / "README.md").write_text(
        f"A randomly initialised ESM-2 ({geometry} geometry, seed {seed}) with the real ESM-2 tokenizer, made by\n"
        "`python -m bacflow.embeddings.tiny esm2`. For tests and demos only: its vectors carry no biological meaning.\n"
    )
    return out


#: ESM-C sizes; all keep ESM-C's head width (64). "300M" is Synthyra/ESMplusplus_small's (ESM-C 300M).
ESMC_GEOMETRIES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2),
    "l6_w320": dict(num_hidden_layers=6, hidden_size=320, num_attention_heads=5),
    "300M": dict(num_hidden_layers=30, hidden_size=960, num_attention_heads=15),
}


def build_esmc(out: str | Path, geometry: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised ESM-C with ESM-C's tokenizer to the folder `out`; return it."""
    import torch

    from bacflow.embeddings.esmc_model import esmc_tokenizer
    from bacflow.embeddings.modeling_esmc import ESMCModel, ESMplusplusConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    esmc_tokenizer().save_pretrained(out)
    torch.manual_seed(seed)
    ESMCModel(ESMplusplusConfig(**ESMC_GEOMETRIES[geometry], bacflow_random_init=True)).save_pretrained(out)
    (out / "README.md").write_text(
        f"A randomly initialised ESM-C ({geometry} geometry, seed {seed}) with ESM-C's tokenizer, made by\n"
        "`python -m bacflow.embeddings.tiny esmc`. For tests and demos only: its vectors carry no biological meaning.\n"
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bacflow.embeddings.tiny", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="model", required=True)
    esm2 = commands.add_parser("esm2", help="a randomly initialised ESM-2 with the real tokenizer")
    esm2.add_argument("out", type=Path, help="folder to write (Hugging Face format)")
    esm2.add_argument("--geometry", choices=sorted(ESM2_GEOMETRIES), default="tiny")
    esm2.add_argument("--seed", type=int, default=0)
    esmc = commands.add_parser("esmc", help="a randomly initialised ESM-C (ESM++ layout) with ESM-C's tokenizer")
    esmc.add_argument("out", type=Path, help="folder to write (Hugging Face format)")
    esmc.add_argument("--geometry", choices=sorted(ESMC_GEOMETRIES), default="tiny")
    esmc.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build = build_esm2 if args.model == "esm2" else build_esmc
    print(build(args.out, args.geometry, args.seed))


if __name__ == "__main__":
    main()
