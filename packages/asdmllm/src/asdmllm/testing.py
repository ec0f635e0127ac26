"""Offline stand-ins for tests: a small LLaVA-1.5-style (Llama SentencePiece) tokenizer and a tiny LLaVA snapshot."""

from __future__ import annotations

import string
from pathlib import Path

from torch import nn

from asdmllm.models import IMAGE_TOKEN, MLLMConfig, build_tiny_llava

__all__ = ["LLAMA_STYLE_PIECES", "build_llama_style_tokenizer", "save_tiny_llava"]

LLAMA_STYLE_PIECES = (
    "▁USER",
    "ASS",
    "IST",
    "ANT",
    "▁Yes",
    "▁No",
    "▁yes",
    "▁no",
    "▁Is",
    "▁the",
    "▁person",
    "▁in",
    "▁image",
    "▁Answer",
    "▁or",
    "▁a",
    "▁an",
    "▁What",
    "▁is",
    "▁job",
    "▁nurse",
    "▁chef",
)
"""Multi-character pieces of the tokenizer (besides single characters): enough of LLaVA's template and the yes/no
probe that words merge as in Llama's vocabulary (``▁Yes``, ``▁No``, ``ASS IST ANT :``)."""


def build_llama_style_tokenizer(legacy: bool = True):
    """A byte-pair tokenizer that splits text like LLaVA-1.5's Llama tokenizer, with a small vocabulary built
    offline: ``<unk> <s> </s>`` (ids 0, 1, 2 as in Llama), ``▁`` and the printable ASCII characters except the
    space, the pieces of :data:`LLAMA_STYLE_PIECES` (each built by left-to-right merges), then ``<image>`` and
    ``<pad>`` (appended, as in ``llava-hf`` checkpoints).

    ``legacy=True``: the pipeline of Llama's ``tokenizer.json`` as converted for ``transformers`` 4.x (normalizer
    ``Prepend("▁")`` then ``Replace(" ", "▁")``), which behaves like LLaVA's own slow SentencePiece tokenizer: every
    encoded text gets a dummy-prefix ``▁``, so ``" Yes"`` alone is ``▁ ▁Yes`` while the same text after
    ``ASSISTANT:`` is ``▁Yes``. It is wrapped in the generic fast class, which keeps that pipeline when saved and
    loaded again. ``legacy=False``: ``transformers`` 5's own ``LlamaTokenizer`` on the same vocabulary (a Metaspace
    pre-tokenizer that adds ``▁`` only at the start of a text that does not already begin with one; a loaded Llama
    ``tokenizer.json`` is rebuilt that way).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    chars = ["▁"] + [c for c in string.printable[:-2] if c != " "]  # \r, \x0b, \x0c dropped; space is ▁
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", *chars])}
    merges = []
    for piece in LLAMA_STYLE_PIECES:
        for k in range(2, len(piece) + 1):
            if piece[:k] not in vocab:
                merges.append((piece[: k - 1], piece[k - 1]))
                vocab[piece[:k]] = len(vocab)
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    if not legacy:
        tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, **specials)
    else:
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def save_tiny_llava(path: str | Path, tokenizer, config: MLLMConfig | None = None) -> nn.Module:
    """Write a tiny random LLaVA (spec §8a sizes) with ``tokenizer`` as a local ``transformers`` snapshot (model,
    tokenizer, CLIP image processor) that ``model.mllm.pretrained: <path>`` loads; returns the saved model."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    config = config or MLLMConfig()
    model = build_tiny_llava(
        config, len(tokenizer), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.pad_token_id
    )
    model.save_pretrained(path)
    size = config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
    ).save_pretrained(path)
    return model
