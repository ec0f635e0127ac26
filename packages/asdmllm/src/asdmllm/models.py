"""The multimodal LLM wrapper: a LLaVA (or Qwen2-VL) model, its tokenizer, input building, label masking, scorers.

The package targets ``transformers``' native :class:`~transformers.LlavaForConditionalGeneration` (spec §3.1,
§7). ``model.mllm.arch: qwen2_vl | qwen2_5_vl`` selects the native ``Qwen2VLForConditionalGeneration`` /
``Qwen2_5_VLForConditionalGeneration`` instead — the successors of the paper's Qwen-VL, which itself is a
``trust_remote_code`` model and is not supported. :class:`MultimodalLLM` owns the model and tokenizer and offers
exactly what the method needs:

* :meth:`MultimodalLLM.build_inputs` — ``USER: <image>\\n{instruction} ASSISTANT: {answer}</s>`` with the image
  placeholder expanded to the number of visual tokens the installed ``transformers`` expects, the text after the
  image tokenised as one string (as LLaVA's ``tokenizer_image_token`` does), and ``labels`` equal to ``-100``
  everywhere except the answer tokens and the closing EOS (LLaVA SFT masking).
* :meth:`MultimodalLLM.forward` — logits ``(B, L, V)``.
* :meth:`MultimodalLLM.yes_no_scores` and :meth:`MultimodalLLM.answer_logprob_scores` — the two relevance
  scorers ``s(x, c)`` behind Skew (spec §3.2).

Tests and the demo use a tiny random LLaVA (spec §8a) with a character-level tokenizer built offline.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, field
from typing import Literal

import torch
from mmzoo.config import check_literal_fields, check_range
from torch import nn

__all__ = [
    "MLLMConfig",
    "MultimodalLLM",
    "build_char_tokenizer",
    "build_tiny_llava",
    "build_tiny_qwen2_vl",
    "check_native_checkpoint",
    "concept_article",
    "qwen2_vl_patchify",
]

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
QWEN_VISION_START, QWEN_VISION_END, QWEN_VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"
QWEN_ARCHS = ("qwen2_vl", "qwen2_5_vl")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class MLLMConfig:
    """Which MLLM to fine-tune and how (spec §3.1, §3.6)."""

    arch: Literal["llava", "qwen2_vl", "qwen2_5_vl"] = "llava"
    """Model family, all native ``transformers`` classes: LLaVA-1.5 (the paper's main model), or Qwen2-VL / Qwen2.5-VL
    (the native successors of the paper's Qwen-VL, which needs remote code; see README)."""
    pretrained: str | None = None
    """Local directory or hub id of a checkpoint of ``arch`` in ``transformers`` format (e.g.
    ``llava-hf/llava-1.5-7b-hf``, ``Qwen/Qwen2-VL-7B-Instruct``). ``None`` builds the tiny random model of spec §8a
    (tests, demo, repro)."""
    local_files_only: bool = True
    """Load ``pretrained`` only from disk / the local hub cache (set false to allow a hub download)."""
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    """Dtype of the loaded pretrained weights (spec §3.6: bf16). The tiny model is always float32."""
    trainable: list[str] = field(default_factory=lambda: ["projector", "llm"])
    """Reconstruction (spec §3.1): parts updated by fine-tuning, any of ``vision``, ``projector``, ``llm``."""
    lora: bool = False
    """Train LoRA adapters (peft) on the LLM's attention/MLP projections instead of its full weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling alpha."""
    lora_dropout: float = 0.05
    """LoRA dropout."""
    gradient_checkpointing: bool = False
    """Recompute LLM activations in the backward pass (7B-scale fine-tunes)."""
    prompt_template: str = "USER: <image>\n{instruction} ASSISTANT:"
    """llava-hf LLaVA-1.5 chat template (spec §3.1); must contain ``<image>`` and ``{instruction}``. For Qwen2-VL the
    ``<image>`` marker becomes ``<|vision_start|><|image_pad|>×N<|vision_end|>``."""
    answer_prefix: str = " "
    """Text between the prompt and the answer (LLaVA template: a space; Qwen chat template: empty). It is tokenised
    together with the prompt text after ``<image>`` and the answer, and supervised with the answer."""
    yes_no_template: str = "Is the person in the image {article} {concept}? Answer yes or no."
    """Reconstruction (spec §3.2): the yes/no bias-probe instruction."""
    yes_words: list[str] = field(default_factory=lambda: ["Yes", "yes"])
    """Case variants whose probabilities are summed into p(Yes) (spec §3.2): of each word's answer tokens after the
    probe prompt, the first one after those all yes/no words share (see ``MultimodalLLM._yes_no_token_ids``)."""
    no_words: list[str] = field(default_factory=lambda: ["No", "no"])
    """Case variants whose probabilities are summed into p(No), read as for ``yes_words``."""
    max_length: int = 2048
    """Longest token sequence (spec §3.6); longer inputs raise an error."""
    image_size: int = 32
    """Vision input size of the tiny model (spec §8a) and of Qwen2-VL models (fixed resolution, a multiple of
    patch × merge size, e.g. 448 → 256 visual tokens). A pretrained LLaVA reads it from its config."""
    patch_size: int = 8
    """Tiny model only: ViT patch size → (image_size/patch_size)^2 visual tokens (÷ merge² for Qwen2-VL)."""
    spatial_merge_size: int = 2
    """Tiny Qwen2-VL model only: patches merged per side by the vision merger."""
    vision_hidden_size: int = 32
    """Tiny model only: vision width."""
    vision_layers: int = 2
    """Tiny model only: vision depth."""
    text_hidden_size: int = 64
    """Tiny model only: LLM width."""
    text_layers: int = 2
    """Tiny model only: LLM depth."""
    text_heads: int = 4
    """Tiny model only: LLM attention heads."""
    max_position_embeddings: int = 256
    """Tiny model only: LLM context length."""

    def __post_init__(self) -> None:
        check_literal_fields(self, "model.mllm")  # an unknown arch would silently build a LLaVA
        bad = sorted(set(self.trainable) - {"vision", "projector", "llm"})
        if bad:
            raise ValueError(f"model.mllm.trainable={self.trainable}: unknown parts {bad}; use vision, projector, llm")
        if IMAGE_TOKEN not in self.prompt_template or "{instruction}" not in self.prompt_template:
            raise ValueError(
                f"model.mllm.prompt_template={self.prompt_template!r} must contain '<image>' and '{{instruction}}'"
            )
        if "{concept}" not in self.yes_no_template:
            raise ValueError(f"model.mllm.yes_no_template={self.yes_no_template!r} must contain '{{concept}}'")
        for key in ("max_length", "image_size", "patch_size", "spatial_merge_size"):
            check_range(f"model.mllm.{key}", getattr(self, key), ge=1, integer=True)
        if self.lora:  # peft's rank, scaling alpha/r (0 leaves the adapters without effect) and dropout
            check_range("model.mllm.lora_r", self.lora_r, ge=1, integer=True)
            check_range("model.mllm.lora_alpha", self.lora_alpha, gt=0)
            check_range("model.mllm.lora_dropout", self.lora_dropout, ge=0, lt=1)
        if self.pretrained is None:  # the sizes of the tiny random model
            for key in ("vision_hidden_size", "vision_layers", "text_hidden_size", "text_layers", "text_heads"):
                check_range(f"model.mllm.{key}", getattr(self, key), ge=1, integer=True)
            check_range("model.mllm.max_position_embeddings", self.max_position_embeddings, ge=1, integer=True)
            if self.vision_hidden_size % 2:
                raise ValueError(
                    f"model.mllm.vision_hidden_size={self.vision_hidden_size}: must be even (the tiny vision "
                    "encoder has 2 attention heads)"
                )
            if self.text_hidden_size % self.text_heads:
                raise ValueError(
                    f"model.mllm.text_heads={self.text_heads} must divide "
                    f"model.mllm.text_hidden_size={self.text_hidden_size}"
                )
        if self.arch in QWEN_ARCHS and self.image_size % (self.patch_size * self.spatial_merge_size):
            raise ValueError(
                f"model.mllm.image_size={self.image_size} must be a multiple of patch_size × spatial_merge_size "
                f"({self.patch_size} × {self.spatial_merge_size}) for {self.arch}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"model.mllm.patch_size={self.patch_size} must divide model.mllm.image_size={self.image_size}"
            )
        if not self.yes_words or not self.no_words:
            raise ValueError("model.mllm.yes_words and model.mllm.no_words must be non-empty")


# vowel letters read with a consonant sound ("a university", "a European", "a one-way") and a silent h ("an hour")
_A_BEFORE = (
    "univers", "uniform", "union", "unique", "unit", "unicorn", "unif", "use", "usu", "uti", "uro", "eu", "ewe", "one",
    "once", "ubiq",
)  # fmt: skip
_AN_BEFORE = ("hour", "honest", "honor", "honour", "heir")


def concept_article(concept: str) -> str:
    """The ``{article}`` of the yes/no template: ``an`` before a vowel sound, else ``a``. Reconstruction (the spec
    shows ``{article}`` without a rule): by the first letter, with the usual spelling exceptions ("a university",
    "a European", "an hour", "an honest")."""
    word = concept.strip().lower()
    if word.startswith(_AN_BEFORE):
        return "an"
    if word.startswith(_A_BEFORE):
        return "a"
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def build_char_tokenizer(extra_specials: tuple[str, ...] = ()):
    """A character-level fast tokenizer built offline (no hub): printable ASCII + ``<pad> <s> </s> <unk> <image>``
    (+ ``extra_specials`` appended at the end of the vocabulary, e.g. Qwen2-VL's vision start/end tokens).

    Reconstruction (spec §8a asks for a word-level vocabulary over the template and concept words): a character
    vocabulary covers every concept, attribute and template string without having to be told them, so the tiny
    model works on any dataset the package reads.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]
    chars = list(string.printable[:-2])  # printable ASCII incl. space, \t, \n (drop \r, \x0b, \x0c)
    vocab = {tok: i for i, tok in enumerate(specials + chars + list(extra_specials))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=[IMAGE_TOKEN, *extra_specials],
    )


def build_tiny_llava(config: MLLMConfig, vocab_size: int, image_token_id: int, pad_token_id: int) -> nn.Module:
    """The tiny random LLaVA of spec §8a (CLIP-ViT 32 px / patch 8 → 16 visual tokens, 2-layer LLaMA)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    llava_config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=config.image_size,
            patch_size=config.patch_size,
            hidden_size=config.vision_hidden_size,
            intermediate_size=2 * config.vision_hidden_size,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=2,
        ),
        text_config=LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=config.text_hidden_size,
            intermediate_size=2 * config.text_hidden_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            num_key_value_heads=config.text_heads,
            max_position_embeddings=config.max_position_embeddings,
            pad_token_id=pad_token_id,
        ),
        image_token_id=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=pad_token_id,
    )
    return LlavaForConditionalGeneration(llava_config)


def build_tiny_qwen2_vl(
    config: MLLMConfig, vocab_size: int, image_token_id: int, pad_token_id: int, eos_token_id: int, special_ids: dict
) -> nn.Module:
    """A tiny random Qwen2-VL / Qwen2.5-VL (the spec §8a sizes; patch 4, merge 2 → 16 visual tokens at 32 px)."""
    import transformers

    heads = config.text_heads
    half_head = config.text_hidden_size // heads // 2
    section = [half_head - 2 * (half_head // 3), half_head // 3, half_head // 3]  # M-RoPE (t, h, w), sums to head/2
    text = dict(
        vocab_size=vocab_size,
        hidden_size=config.text_hidden_size,
        intermediate_size=2 * config.text_hidden_size,
        num_hidden_layers=config.text_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0},
        pad_token_id=pad_token_id,
        bos_token_id=None,
        eos_token_id=eos_token_id,
    )
    common = dict(
        depth=config.vision_layers,
        num_heads=2,
        patch_size=config.patch_size,
        spatial_merge_size=config.spatial_merge_size,
        temporal_patch_size=2,
    )
    if config.arch == "qwen2_vl":
        vision = dict(common, embed_dim=config.vision_hidden_size, hidden_size=config.text_hidden_size, mlp_ratio=2)
        cls, cfg_cls = transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLConfig
    else:
        vision = dict(
            common,
            hidden_size=config.vision_hidden_size,
            intermediate_size=2 * config.vision_hidden_size,
            out_hidden_size=config.text_hidden_size,
            window_size=config.patch_size * config.spatial_merge_size * 2,
            fullatt_block_indexes=[config.vision_layers - 1],
        )
        cls, cfg_cls = transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig
    return cls(cfg_cls(text_config=text, vision_config=vision, image_token_id=image_token_id, **special_ids))


def qwen2_vl_patchify(pixels: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> torch.Tensor:
    """Normalised images (B, 3, S, S) → Qwen2-VL ``pixel_values`` (B·g², 3·T·P·P) with g = S/P, in the order of
    ``transformers``' Qwen2VLImageProcessor (the still image repeated over the T temporal frames, patches grouped
    merge × merge)."""
    b, c, h, w = pixels.shape
    gh, gw = h // patch_size, w // patch_size
    x = pixels.unsqueeze(1).expand(b, temporal_patch_size, c, h, w)
    x = x.reshape(
        b, temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size
    )
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (B, gh/m, gw/m, m, m, C, T, P, P)
    return x.reshape(b * gh * gw, c * temporal_patch_size * patch_size * patch_size)


def _model_class(arch: str):
    import transformers

    return {
        "llava": transformers.LlavaForConditionalGeneration,
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    }[arch]


_NATIVE_MODEL_TYPES = {"llava": ("llava",), "qwen2_vl": ("qwen2_vl",), "qwen2_5_vl": ("qwen2_5_vl",)}
_REMOTE_CODE_MODELS = {  # model_type of the paper's MLLMs that exist only as trust_remote_code checkpoints
    "qwen": "Qwen-VL (paper) — use arch qwen2_vl / qwen2_5_vl, its native successors (not the paper's model)",
    "bunny-llama": "Bunny-Llama-3-8B-V (paper's Bunny-8B)",
    "bunny-phi": "Bunny (Phi backbone)",
    "bunny-qwen": "Bunny (Qwen backbone)",
    "bunny-minicpm": "Bunny (MiniCPM backbone)",
    "bunny-stablelm": "Bunny (StableLM backbone)",
}


def check_native_checkpoint(path: str, arch: str) -> None:
    """Refuse a local checkpoint that is not a native ``transformers`` model of ``arch`` with a clear message.

    The paper's Qwen-VL and Bunny checkpoints ship their model code with the weights (``auto_map`` /
    ``trust_remote_code``); this package never runs remote code, so they are named here instead of failing later
    with a weight-loading error. Hub ids (not local folders) are checked by ``transformers`` itself.
    """
    import json
    from pathlib import Path

    config_file = Path(path).expanduser() / "config.json"
    if not config_file.is_file():
        return
    cfg = json.loads(config_file.read_text())
    model_type = str(cfg.get("model_type", ""))
    if model_type in _REMOTE_CODE_MODELS or ("auto_map" in cfg and model_type not in _NATIVE_MODEL_TYPES[arch]):
        what = _REMOTE_CODE_MODELS.get(model_type, f"model_type {model_type!r} with its own code (auto_map)")
        raise ValueError(
            f"model.mllm.pretrained={path!r} is a trust_remote_code checkpoint: {what}. This package runs only native "
            "transformers classes (model.mllm.arch: llava, qwen2_vl, qwen2_5_vl) and never remote code; Bunny and "
            "Qwen-VL are not supported (see README, Configs: Other MLLMs of the paper)."
        )
    if model_type and model_type not in _NATIVE_MODEL_TYPES[arch]:
        raise ValueError(
            f"model.mllm.pretrained={path!r} has model_type {model_type!r}, but model.mllm.arch={arch!r} expects "
            f"{' or '.join(_NATIVE_MODEL_TYPES[arch])}; set model.mllm.arch to match the checkpoint"
        )


def _load_pretrained(config: MLLMConfig):
    """Load model + tokenizer + image statistics from ``config.pretrained``; a clear error when it is missing."""
    from transformers import AutoProcessor

    check_native_checkpoint(config.pretrained, config.arch)

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.torch_dtype]
    example = {
        "llava": "llava-hf/llava-1.5-7b-hf",
        "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
        "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    }[config.arch]
    try:
        processor = AutoProcessor.from_pretrained(config.pretrained, local_files_only=config.local_files_only)
        model = _model_class(config.arch).from_pretrained(
            config.pretrained, dtype=dtype, local_files_only=config.local_files_only
        )
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"model.mllm.pretrained={config.pretrained!r}: could not load a {config.arch} checkpoint ({err}). Supply a "
            "local directory in transformers format (config.json, model-*.safetensors, tokenizer.json, "
            f"preprocessor_config.json), e.g. a snapshot of {example}, or set "
            "model.mllm.local_files_only=false to download the hub id."
        ) from err
    # transformers returns the loaded model in eval mode, and Lightning keeps a submodule's mode at the start of fit:
    # without this, fine-tuning would run with dropout (e.g. LoRA's) off unless a Skew refresh had toggled the modes
    model.train()
    image_processor = processor.image_processor
    return model, processor.tokenizer, tuple(image_processor.image_mean), tuple(image_processor.image_std)


class MultimodalLLM(nn.Module):
    """A LLaVA / Qwen2-VL model + tokenizer with SFT input building and the Skew scorers.

    Shapes: ``pixel_values`` (B, 3, S, S) float normalised, ``input_ids`` (B, L), ``logits`` (B, L, V).
    """

    def __init__(self, config: MLLMConfig) -> None:
        super().__init__()
        self.config = config
        self.is_qwen = config.arch in QWEN_ARCHS
        if config.pretrained is None:
            if self.is_qwen:
                self.tokenizer = build_char_tokenizer((QWEN_VISION_START, QWEN_VISION_END, QWEN_VIDEO_PAD))
                ids = {
                    "vision_start_token_id": self.tokenizer.convert_tokens_to_ids(QWEN_VISION_START),
                    "vision_end_token_id": self.tokenizer.convert_tokens_to_ids(QWEN_VISION_END),
                    "video_token_id": self.tokenizer.convert_tokens_to_ids(QWEN_VIDEO_PAD),
                }
                self.model = build_tiny_qwen2_vl(
                    config,
                    len(self.tokenizer),
                    self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                    self.tokenizer.pad_token_id,
                    self.tokenizer.eos_token_id,
                    ids,
                )
            else:
                self.tokenizer = build_char_tokenizer()
                image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
                self.model = build_tiny_llava(config, len(self.tokenizer), image_token_id, self.tokenizer.pad_token_id)
            mean, std = CLIP_MEAN, CLIP_STD
        else:
            self.model, self.tokenizer, mean, std = _load_pretrained(config)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        model_config = self.model.config
        self.image_token_id = int(model_config.image_token_id)
        vision = model_config.vision_config
        if self.is_qwen:
            # fixed resolution (Reconstruction): S/P patches per side, merged m × m into one visual token
            self.image_size = config.image_size
            self.qwen_patch = (int(vision.patch_size), int(vision.spatial_merge_size), int(vision.temporal_patch_size))
            unit = self.qwen_patch[0] * self.qwen_patch[1]
            if self.image_size % unit:
                raise ValueError(
                    f"model.mllm.image_size={self.image_size} must be a multiple of {unit} (patch × merge of the model)"
                )
            self.num_image_tokens = (self.image_size // unit) ** 2
            self._image_marker = (
                [int(model_config.vision_start_token_id)],
                [int(model_config.vision_end_token_id)],
            )
        else:
            self.image_size = int(vision.image_size)
            grid = vision.image_size // vision.patch_size
            # transformers >= 4.47 expects the placeholder already expanded: one token per visual feature (spec §7)
            self.num_image_tokens = grid * grid + (1 if model_config.vision_feature_select_strategy == "full" else 0)
            self._image_marker = ([], [])
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        prefix, suffix = config.prompt_template.split(IMAGE_TOKEN, 1)
        self._prompt_prefix_ids = self._encode(prefix)
        self._prompt_suffix = suffix
        self._yes_no_carrier, self.yes_ids, self.no_ids = self._yes_no_token_ids()
        self._set_trainable(config)

    # ------------------------------------------------------------------------------------------ setup helpers
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _encode_with_answers(self, prompts: list[str], answers: list[str]) -> list[tuple[list[int], int]]:
        """Tokenise each ``prompt + answer`` as one string → (its ids, the index of its first answer token).

        Tokenising the pieces apart is not the same: LLaVA's (legacy SentencePiece) Llama tokenizer gives every
        encoded text a leading ``▁``, so ``" Yes"`` alone is ``▁ ▁Yes`` while ``ASSISTANT: Yes`` ends in ``: ▁Yes``. The
        boundary rule: when the ids of ``prompt`` alone are a prefix of the whole ids, the answer starts right after
        them; otherwise a token crosses the boundary (e.g. ``▁Yes`` made of a template's trailing space and the
        answer), and the answer starts at the first token that covers a character of ``answer`` (fast-tokenizer
        offsets), so every answer character is supervised and the crossing token belongs to the answer.
        """
        full = self._encode_batch([p + a for p, a in zip(prompts, answers, strict=True)])
        alone = self._encode_batch(prompts)
        out = []
        for prompt, answer, ids, head in zip(prompts, answers, full, alone, strict=True):
            if ids[: len(head)] == head:
                out.append((ids, len(head)))
                continue
            try:
                enc = self.tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
            except NotImplementedError as err:
                raise ValueError(
                    f"the tokenizer merges prompt and answer tokens ({prompt[-20:]!r} + {answer[:20]!r}) and gives no "
                    "character offsets to place the answer boundary; use a fast (tokenizers) tokenizer"
                ) from err
            ends = [end for _, end in enc["offset_mapping"]]
            out.append((ids, next((k for k, end in enumerate(ends) if end > len(prompt)), len(ids))))
        return out

    def _yes_no_token_ids(self) -> tuple[list[int], list[int], list[int]]:
        """(carrier, yes ids, no ids) of the ``yes_prob`` scorer, read where training puts the answer.

        Each yes/no word is tokenised as the answer to a probe prompt, exactly as :meth:`build_inputs` does. The
        answer tokens that all words share at their start form a lead (the character tokenizer's ``" "`` of
        ``answer_prefix``; none for LLaVA's ``▁Yes`` / ``▁No``); each word's next token is its scoring id, so p(Yes)
        is read at the position where a model fine-tuned on ``Yes`` answers predicts that token. ``carrier`` is the
        lead plus the first yes word's scoring id: the answer tokens :meth:`yes_no_scores` expects in its input.
        """
        cfg = self.config
        probe = self._prompt_suffix.format(instruction=self.yes_no_prompt(cfg.yes_no_template, "person"))
        words = [*cfg.yes_words, *cfg.no_words]
        split = self._encode_with_answers([probe] * len(words), [cfg.answer_prefix + w for w in words])
        answers = [ids[start:] for ids, start in split]
        n = 0
        while all(len(a) > n for a in answers) and len({a[n] for a in answers}) == 1:
            n += 1
        if len({tuple(ids[:start]) for ids, start in split}) > 1 or any(len(a) <= n for a in answers):
            raise ValueError(
                f"model.mllm.yes_words={cfg.yes_words} / no_words={cfg.no_words}: after the probe prompt the words "
                "do not split into a shared lead and a distinct next token"
            )
        yes = sorted({a[n] for a in answers[: len(cfg.yes_words)]})
        no = sorted({a[n] for a in answers[len(cfg.yes_words) :]})
        if set(yes) & set(no):
            raise ValueError(
                f"model.mllm.yes_words={cfg.yes_words} and no_words={cfg.no_words} share a scoring token "
                f"{sorted(set(yes) & set(no))}; choose words that start differently"
            )
        return answers[0][: n + 1], yes, no

    def _set_trainable(self, config: MLLMConfig) -> None:
        """Freeze everything, then unfreeze the configured parts (or add LoRA adapters to the LLM)."""
        inner = self.model.model
        self.model.requires_grad_(False)
        if self.is_qwen:  # the merger (patch merge + MLP into the LLM width) is Qwen2-VL's projector
            vision_parts = [m for name, m in inner.visual.named_children() if name != "merger"]
            projector = inner.visual.merger
        else:
            vision_parts, projector = [inner.vision_tower], inner.multi_modal_projector
        if "vision" in config.trainable:
            for part in vision_parts:
                part.requires_grad_(True)
        if "projector" in config.trainable:
            projector.requires_grad_(True)
        if config.lora:
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            )
            inner.language_model = inject_adapter_in_model(lora, inner.language_model)
            for name, param in inner.language_model.named_parameters():
                param.requires_grad_("lora_" in name)
        elif "llm" in config.trainable:
            inner.language_model.requires_grad_(True)
            self.model.lm_head.requires_grad_(True)
        # Trained weights of a bf16/fp16 checkpoint are kept in fp32 (the frozen base stays low-precision): an AdamW
        # step of lr = 5e-7 … 2e-5 is below half a bf16 ulp of most weights and would be rounded away. Under
        # ``precision: bf16-mixed`` autocast runs the mixed-dtype model in bf16.
        low = [p for p in self.model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
        if low:
            log.info("keeping %d trainable %s tensors in float32", len(low), low[0].dtype)
            for param in low:
                param.data = param.data.float()
        if config.gradient_checkpointing:
            # non-reentrant checkpointing, said explicitly: the reentrant kind gives LoRA adapters behind frozen input
            # embeddings no gradient. Newer transformers name the switch ``activation_checkpointing_enable`` (the
            # old name warns that it goes in v6); earlier 5.x releases have the old name only.
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # ---------------------------------------------------------------------------------------------- inputs
    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) → float ``(x/255 - mean)/std`` in the model's dtype; checks S."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but the vision tower expects {self.image_size}x{self.image_size}:"
                f" set data.image_size={self.image_size}"
            )
        x = (images.float() / 255.0 - self.image_mean) / self.image_std  # (B, 3, S, S)
        return x.to(self.model.dtype)

    def _head_ids(self) -> list[int]:
        """``[<s>] prefix <image>×N`` (Qwen2-VL: with its vision start / end markers): every sequence's first ids."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return (
            bos
            + self._prompt_prefix_ids
            + self._image_marker[0]
            + [self.image_token_id] * self.num_image_tokens
            + self._image_marker[1]
        )

    def generation_prompt_ids(self, instruction: str) -> list[int]:
        """The ids a greedy answer to ``instruction`` is generated after: those that precede the answer in the
        training sequence (:meth:`build_inputs` with an answer, up to its ``prompt_lengths``).

        Encoding the prompt alone can end in a token training never puts before an answer: with Llama's tokenizer
        and a template ending in a space, the prompt alone ends in ``: ▁`` while training has ``: ▁Yes`` (the
        boundary rule of :meth:`_encode_with_answers` makes ``▁Yes`` an answer token, so the prompt ends at ``:``).
        The boundary is placed with the answer ``answer_prefix + yes_words[0]`` (as for the ``yes_prob`` probe);
        any answer whose first word takes in the template's space the same way (``▁a``, ``▁chef``) has the same
        prompt ids. For the character tokenizer (which never merges) they are the ids of the prompt encoded alone.
        """
        suffix = self._prompt_suffix.format(instruction=instruction)
        [(tail, start)] = self._encode_with_answers([suffix], [self.config.answer_prefix + self.config.yes_words[0]])
        ids = self._head_ids() + tail[:start]
        if len(ids) > self.config.max_length:
            raise ValueError(f"sequence of {len(ids)} tokens exceeds model.mllm.max_length={self.config.max_length}")
        return ids

    def build_inputs(
        self, instructions: list[str], answers: list[str] | None = None, label_answer_prefix: bool = True
    ) -> dict[str, torch.Tensor]:
        """Token ids, attention mask and SFT labels for a batch (right padded).

        ``[<s>] prefix <image>×N`` then the text after ``<image>`` — ``suffix(instruction)`` and, when answers are
        given, ``{answer_prefix}{answer}`` — tokenised as one string, then ``</s>`` (Qwen2-VL:
        ``<|vision_start|> <|image_pad|>×N <|vision_end|>`` and its EOS ``<|im_end|>``), as LLaVA's own code splits
        the conversation only at ``<image>``. Labels are ``-100`` on the image, instruction and padding positions;
        only the answer tokens (the tokens that hold ``answer_prefix + answer``, boundary rule in
        :meth:`_encode_with_answers`) and EOS are supervised. Also returns ``prompt_lengths`` (B,) — the position
        where the answer starts (without answers: the prompt's length).

        ``label_answer_prefix=False`` gives the same ids but counts ``answer_prefix`` in the prompt: labels then
        start at the answer's first token (a token holding the prefix and the answer's first characters, such as
        ``▁nurse``, is the answer's), as the ``answer_logprob`` scorer reads them.
        """
        if not instructions:
            raise ValueError("build_inputs: empty batch")
        if answers is not None and len(answers) != len(instructions):
            raise ValueError(f"build_inputs: {len(instructions)} instructions but {len(answers)} answers")
        head = self._head_ids()
        suffixes = [self._prompt_suffix.format(instruction=instruction) for instruction in instructions]
        if answers is None:
            tails, eos = [(ids, len(ids)) for ids in self._encode_batch(suffixes)], []
        else:
            prefix = self.config.answer_prefix
            if label_answer_prefix:
                tails = self._encode_with_answers(suffixes, [prefix + a for a in answers])
            else:  # the same text, so the same ids; only the boundary moves past the prefix
                tails = self._encode_with_answers([suffix + prefix for suffix in suffixes], answers)
            eos = [self.tokenizer.eos_token_id]
        rows, label_rows, prompt_lengths = [], [], []
        for tail, start in tails:
            ids = head + tail + eos
            if len(ids) > self.config.max_length:
                raise ValueError(
                    f"sequence of {len(ids)} tokens exceeds model.mllm.max_length={self.config.max_length}"
                )
            rows.append(ids)
            label_rows.append([-100] * (len(head) + start) + tail[start:] + eos)
            prompt_lengths.append(len(head) + start)
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)  # (B, L)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # (B, L)
        for i, (ids, lab) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attention_mask[i, : len(ids)] = 1
        device = self.image_mean.device
        return {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "labels": labels.to(device),
            "prompt_lengths": torch.tensor(prompt_lengths, device=device),
        }

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """images uint8 (B, 3, S, S), input_ids / attention_mask (B, L) → logits (B, L, V)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **self.vision_inputs(images, input_ids))
        return out.logits

    def vision_inputs(self, images: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's image arguments: LLaVA ``pixel_values`` (B, 3, S, S); Qwen2-VL flattened patches (B·g², 3·T·P²)
        with ``image_grid_thw`` (B, 3) and ``mm_token_type_ids`` (B, L) (1 on image tokens, for M-RoPE)."""
        pixels = self.normalize_images(images)
        if not self.is_qwen:
            return {"pixel_values": pixels}
        patch, merge, temporal = self.qwen_patch
        grid = self.image_size // patch
        return {
            "pixel_values": qwen2_vl_patchify(pixels, patch, merge, temporal),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * images.shape[0], device=images.device),
            "mm_token_type_ids": (input_ids == self.image_token_id).int(),
        }

    # --------------------------------------------------------------------------------------------- scorers
    @staticmethod
    def yes_no_prompt(template: str, concept: str) -> str:
        """The yes/no probe instruction for ``concept``."""
        return template.format(article=concept_article(concept), concept=concept)

    def yes_no_scores(self, images: torch.Tensor, concepts: list[list[str]]) -> torch.Tensor:
        """Scorer ``yes_prob`` (spec §3.2): ``s(x, c) = p(Yes) / (p(Yes) + p(No))`` of the next token.

        images uint8 (B, 3, S, S); ``concepts[i]`` the M concept phrases to score for image i (same M per row)
        → scores (B, M) in [0, 1]. Case variants of Yes/No are summed.

        The input is the training sequence of the answer ``yes_words[0]`` (:meth:`build_inputs`), cut after the
        answer tokens all yes/no words share (``answer_prefix``'s own token, if the tokenizer gives it one); the
        scores are read where the next token — ``▁Yes`` vs ``▁No`` for LLaVA — is predicted (see ``yes_ids``).
        """
        batch, m = len(concepts), len(concepts[0])
        instructions = [self.yes_no_prompt(self.config.yes_no_template, c) for row in concepts for c in row]
        inputs = self.build_inputs(instructions, [self.config.yes_words[0]] * len(instructions))
        ids, start = inputs["input_ids"], inputs["prompt_lengths"]  # (B*M, L), (B*M,)
        carrier = torch.tensor(self._yes_no_carrier, device=ids.device)  # (n,) shared lead + the yes token
        at = (start.unsqueeze(1) + torch.arange(len(carrier), device=ids.device)).clamp_max(ids.shape[1] - 1)
        bad = (ids.gather(1, at) != carrier).any(1).nonzero().flatten().tolist()  # rows tokenised unlike the probe
        if bad:
            raise ValueError(
                f"yes/no probe: the answer start of {[instructions[i] for i in bad[:3]]} tokenises differently than "
                "the probe prompt the yes/no token ids were read from (model.mllm.yes_no_template)"
            )
        pos = start + len(carrier) - 2  # (B*M,) its logits predict the token that tells Yes from No
        cut = int(pos.max()) + 1
        images_rep = images.repeat_interleave(m, dim=0)  # (B*M, 3, S, S)
        logits = self(images_rep, ids[:, :cut], inputs["attention_mask"][:, :cut])  # (B*M, cut, V)
        next_logits = logits[torch.arange(logits.shape[0], device=logits.device), pos].float()  # (B*M, V)
        # p(Yes) / (p(Yes) + p(No)) = sigmoid(log p(Yes) − log p(No)); the softmax normaliser cancels, so the ratio
        # is formed from log-sums of the logits: it stays exact when another token takes almost all of the mass
        # (the probabilities themselves would underflow to 0 and the ratio would collapse).
        log_yes = next_logits[:, self.yes_ids].logsumexp(-1)  # (B*M,) log p(Yes) + log Z
        log_no = next_logits[:, self.no_ids].logsumexp(-1)  # (B*M,) log p(No) + log Z
        return torch.sigmoid(log_yes - log_no).view(batch, m)  # (B, M) renormalised to Yes+No = 1

    def answer_logprob_scores(
        self, images: torch.Tensor, questions: list[list[str]], concepts: list[list[str]]
    ) -> torch.Tensor:
        """Scorer ``answer_logprob`` (spec §3.2): ``s(x, c) = (1/|c|) Σ_t log p(c_t | c_<t, question, x)``.

        images uint8 (B, 3, S, S); ``questions[i]`` / ``concepts[i]`` the M questions and concept phrases of image i
        → scores (B, M). The input is the training sequence of the answer ``c`` (:meth:`build_inputs`), but only the
        concept phrase's own tokens are averaged: not EOS, and not a token that holds nothing but ``answer_prefix``
        (the character tokenizer's ``" "``, a Llama ``▁`` before a word it does not merge with), which training
        supervises too. A token holding the prefix and the first characters of the concept (``▁nurse``) is the
        concept's (``build_inputs(..., label_answer_prefix=False)``), so the same text is scored the same whether its
        space sits in ``prompt_template`` or in ``answer_prefix``.
        """
        batch, m = len(concepts), len(concepts[0])
        flat_q = [q for row in questions for q in row]
        flat_c = [c for row in concepts for c in row]
        inputs = self.build_inputs(flat_q, flat_c, label_answer_prefix=False)
        ids, labels = inputs["input_ids"], inputs["labels"].clone()  # (B*M, L)
        eos_pos = (labels != -100).cumsum(-1).argmax(-1)  # last supervised position = EOS
        labels[torch.arange(labels.shape[0], device=labels.device), eos_pos] = -100
        images_rep = images.repeat_interleave(m, dim=0)  # (B*M, 3, S, S)
        logits = self(images_rep, ids, inputs["attention_mask"])  # (B*M, L, V)
        from .losses import token_log_likelihood

        return token_log_likelihood(logits, labels, "mean").view(batch, m)  # (B, M)

    @torch.no_grad()
    def generate_answers(self, images: torch.Tensor, instructions: list[str], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers (spec §3.7), decoded and stripped; used by the general-ability hook and ``predict``.

        Each answer is generated after :meth:`generation_prompt_ids`, the ids training puts before its answers."""
        outs = []
        device = self.image_mean.device
        for i, instruction in enumerate(instructions):  # one by one: right padding does not suit generation
            input_ids = torch.tensor([self.generation_prompt_ids(instruction)], device=device)  # (1, L)
            generated = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **self.vision_inputs(images[i : i + 1], input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            new_tokens = generated[0, input_ids.shape[1] :]
            outs.append(self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
        return outs
