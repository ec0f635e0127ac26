"""Query side (spec §3.0, §3.2): BLIP's MED text encoder / decoder from transformers, and the BERT tokenizer.

The text encoder is ``BlipTextModel`` built with ``is_decoder=True`` (so every layer owns its cross-attention
sub-layer, LAVIS names ``encoder.layer.i.crossattention.*``) and called with ``is_decoder=False`` for the
bidirectional modes (ITC text-only, ITM, QA question encoder, multiple-choice). The decoder is
``BlipTextLMHeadModel`` (causal self-attention + cross-attention + LM head, LAVIS names ``bert.*``, ``cls.*``).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from mmzoo.config import check_range
from transformers import BertTokenizer
from transformers.models.blip.configuration_blip import BlipTextConfig

__all__ = ["TextConfig", "build_tokenizer", "blip_text_config", "TINY_VOCAB"]

TINY_VOCAB = "tiny"
"""``model.config.text.vocab_path: tiny`` selects the ~220-word vocabulary shipped for tests and demos (not for real
data)."""


@dataclass
class TextConfig:
    """BERT-base MED (spec §3.0) and its tokenizer."""

    vocab_path: str = "bert-base-uncased"
    """Local folder (or file) with bert-base-uncased ``vocab.txt``; ``tiny`` = the shipped test vocabulary."""
    hidden_size: int = 768
    """BERT hidden size."""
    num_layers: int = 12
    """BERT layers (each with a cross-attention sub-layer)."""
    num_heads: int = 12
    """Attention heads."""
    intermediate_size: int = 3072
    """Feed-forward width."""
    max_position_embeddings: int = 512
    """Text positions."""
    dropout: float = 0.1
    """Hidden and attention dropout."""
    layer_norm_eps: float = 1e-12
    """BERT LayerNorm epsilon."""

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            check_range(f"model.config.text.{key}", getattr(self, key), ge=1, integer=True)
        check_range("model.config.text.dropout", self.dropout, ge=0, le=1)
        check_range("model.config.text.layer_norm_eps", self.layer_norm_eps, gt=0)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.config.text.num_heads={self.num_heads} must divide "
                f"model.config.text.hidden_size={self.hidden_size}"
            )


def build_tokenizer(vocab_path: str) -> BertTokenizer:
    """bert-base-uncased WordPiece tokenizer plus ``[DEC]`` (BOS) and ``[ENC]`` (spec §4, Tokenizer files).

    Raises:
        FileNotFoundError: ``text.vocab_path`` has no ``vocab.txt`` (a local copy of bert-base-uncased is needed;
            nothing is downloaded).
    """
    if vocab_path == TINY_VOCAB:
        path = Path(str(importlib.resources.files("rtqvl.models") / "tiny_vocab.txt"))
    else:
        path = Path(vocab_path)
        if path.is_dir():
            path = path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"model.config.text.vocab_path={vocab_path!r}: no vocab.txt found. Supply a local folder holding the "
            "bert-base-uncased vocab.txt (e.g. a copy of the Hugging Face 'bert-base-uncased' repo); see README, "
            "Pretrained weights."
        )
    tok = BertTokenizer(str(path), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    return tok


def blip_text_config(cfg: TextConfig, tokenizer: BertTokenizer, encoder_hidden_size: int) -> BlipTextConfig:
    """transformers ``BlipTextConfig`` (always ``is_decoder=True`` so cross-attention layers exist)."""
    return BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        encoder_hidden_size=encoder_hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        hidden_act="gelu",
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        is_decoder=True,
        tie_word_embeddings=True,
        label_smoothing=0.0,
    )
