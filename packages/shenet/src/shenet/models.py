"""SHE-Net (Yu et al., arXiv:2404.14066): CLIP text/video towers, the text syntax hierarchy's node features, the
syntax-guided visual representation and the syntax-guided similarity (spec §3.1-3.6, §3.9).

Reading order: config → CLIP backbone → text side (node features, hierarchy enhancement) → video side (frames,
patches, optional temporal transformer) → syntax-guided pooling and similarity → :class:`SHENet`.

Shape letters: B batch (B_t texts, B_v videos), L text tokens, V/M/A verb/noun/adjective slots, T frames,
P patches per frame, D embedding dim. All features are L2-normalised; ``cos`` is a dot product.

Reconstruction (spec §1 item 6): the paper states the two uses of the syntax hierarchy (guide the visual
representation, guide the similarity) and the levels (text: sentence/verb/noun/adjective; video: video/frame/patch),
not the equations; everything below follows spec §3.3-3.6 and each choice is a config key.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_literal_fields, check_range
from mmzoo.data import read_torch
from mmzoo.ops import token_max_sim
from torch import nn

__all__ = [
    "SHENetConfig",
    "TextFeatures",
    "VideoFeatures",
    "build_clip",
    "uses_quick_gelu",
    "check_architecture",
    "TemporalTransformer",
    "l2_normalize",
    "hierarchy_enhance",
    "masked_softmax",
    "syntax_guided_similarity",
    "aggregate_similarity",
    "sentence_guided_similarity",
    "SHENet",
]

log = logging.getLogger(__name__)

LEVELS = ("sentence", "verb", "noun", "adj")

TextEnhance = Literal["none", "mean", "gated"]
"""Bottom-up hierarchy enhancements (``model.config.text_enhance``)."""
GuidedPooling = Literal["softmax", "max"]
"""Guided pooling of frames and patches (``model.config.guided_pooling``)."""
NounTemporal = Literal["parent", "root", "uniform"]
"""Frame weights pooling a noun's regions over time (``model.config.noun_temporal``)."""


@dataclass
class SHENetConfig:
    """Architecture of SHE-Net (spec §3). Defaults are the spec's main setting (ViT-B/32, meanP, all levels)."""

    clip_model: Literal["ViT-B-32", "ViT-B-16", "custom"] = "ViT-B-32"
    """open_clip architecture (spec §3.1); ``custom`` builds a CLIP from the ``custom_*`` keys (tests, demo)."""
    pretrained: str | None = None
    """CLIP weights: a local open_clip state-dict file, OpenAI's TorchScript ``ViT-B-32.pt``/``ViT-B-16.pt``, or an
    open_clip pretrained tag (``openai``, downloads). Required unless ``random_init`` is true."""
    random_init: bool = False
    """Build CLIP with random weights (tests and demos only)."""
    custom_embed_dim: int = 32
    """``custom`` CLIP: joint embedding dim D."""
    custom_image_size: int = 32
    """``custom`` CLIP: input frame size."""
    custom_patch_size: int = 16
    """``custom`` CLIP: ViT patch size (P = (image_size / patch_size)^2)."""
    custom_vision_width: int = 64
    custom_vision_layers: int = 2
    custom_vision_head_width: int = 32
    custom_text_width: int = 64
    custom_text_layers: int = 2
    custom_text_heads: int = 2
    custom_context_length: int = 32
    """``custom`` CLIP: text context length (>= data.max_words)."""
    quick_gelu: bool | None = None
    """Transformer MLP activation of CLIP: QuickGELU (``x·σ(1.702x)``, what OpenAI's CLIP was trained with) or
    nn.GELU. ``null`` = auto: QuickGELU for the OpenAI architectures ``ViT-B-32``/``ViT-B-16`` (spec §3.1: OpenAI
    weights, whether given as TorchScript, as an open_clip state-dict file or as the ``openai`` tag), the activation
    open_clip records for any other pretrained tag, nn.GELU for ``custom``. Set ``false`` for a local file of
    weights trained with GELU (e.g. LAION's open_clip checkpoints)."""

    temporal: Literal["meanP", "seqTransf"] = "meanP"
    """Temporal head on frame features (spec §3.1): none (meanP) or CLIP4Clip's seqTransf."""
    temporal_layers: int = 4
    """seqTransf layers (CLIP4Clip: 4, initialised from the first CLIP text blocks when widths match)."""
    temporal_heads: int = 8
    """seqTransf heads."""
    max_frames: int = 12
    """Frame position embeddings of seqTransf (>= data.max_frames)."""

    levels: list[str] = field(default_factory=lambda: list(LEVELS))
    """Text hierarchy levels in use (spec §3.9), a subset of sentence, verb, noun, adj; sentence is required."""
    text_enhance: TextEnhance = "mean"
    """Bottom-up hierarchy enhancement of node features (spec §3.3). Reconstruction."""
    guide_visual: bool = True
    """Syntax-guided visual representation (spec §3.5); False: verbs see the mean frame, nouns the mean patch."""
    guide_similarity: bool = True
    """Syntax-guided similarity (spec §3.6); False: S = S1 (sentence-video level only)."""
    sentence_guidance: bool = False
    """With ``guide_visual``, the sentence-level video feature is text-conditioned too: v_ik = norm(Σ_t α_{0,t} f_t)
    (root → frames attention) instead of the mean frame. Off by default (spec §3.6: S1 = cos(s, v)). Reconstruction:
    with it, ``guide_similarity=False`` still keeps a syntax-guided visual representation, so the ablation row
    "+ syntax-guided visual representation" differs from the baseline."""
    guided_pooling: GuidedPooling = "softmax"
    """Guided pooling: softmax attention with temperatures (spec §3.5), or hard max (``max``: verb-frame and
    noun-patch scores are token max-similarities, mmzoo.ops.token_max_sim; noun pooling is then not hierarchical).
    Only read with ``guide_visual``: without it verbs and nouns see the mean frame and mean patch either way."""
    noun_temporal: NounTemporal = "parent"
    """Frame weights pooling a noun's regions over time: its parent verb's (root's when attached to the root),
    always the root's, or uniform over valid frames. Reconstruction (spec §3.5)."""
    tau_frame: float = 0.01
    """Temperature τ_f of the verb/root → frame softmax (spec §3.5). Reconstruction."""
    tau_patch: float = 0.01
    """Temperature τ_p of the noun → patch softmax (spec §3.5). Reconstruction."""
    learnable_tau: bool = False
    """Learn τ_f, τ_p (log-parameterised)."""
    sim_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Weights (w1, w2, w3) of the sentence, verb and noun similarities (spec §3.6). Reconstruction."""
    sim_weighting: Literal["fixed", "learned"] = "fixed"
    """``learned``: softmax over three learnable logits (zero-init) replaces ``sim_weights``."""

    def __post_init__(self) -> None:
        # clip_model, temporal, text_enhance, guided_pooling, noun_temporal and sim_weighting are read with if/else:
        # a misspelt one would silently build or score another variant (meanP, mean enhancement, softmax pooling...)
        check_literal_fields(self, "model.config")
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise ValueError(f"model.config.levels has unknown levels {bad}; choose from {list(LEVELS)}")
        if "sentence" not in self.levels:
            raise ValueError("model.config.levels must contain 'sentence' (the H1 level is always used)")
        if len(self.sim_weights) != 3:
            raise ValueError(f"model.config.sim_weights={self.sim_weights}: three weights (w1, w2, w3) expected")
        for i, w in enumerate(self.sim_weights):  # S1 is always available, so w1 > 0 keeps the mean defined
            check_range(f"model.config.sim_weights[{i}]", w, gt=0 if i == 0 else None, ge=0 if i else None)
        check_range("model.config.tau_frame", self.tau_frame, gt=0)  # similarities are divided by them
        check_range("model.config.tau_patch", self.tau_patch, gt=0)
        # sizes of the custom CLIP and of the seqTransf head: zeros fail inside open_clip or the first forward pass
        for key in ("custom_embed_dim", "custom_image_size", "custom_patch_size", "custom_vision_width"):
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        check_range("model.config.custom_vision_layers", self.custom_vision_layers, ge=0, integer=True)
        for key in ("custom_vision_head_width", "custom_text_width", "custom_text_layers", "custom_text_heads"):
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        check_range("model.config.custom_context_length", self.custom_context_length, ge=1, integer=True)
        for key in ("temporal_layers", "temporal_heads", "max_frames"):
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        if self.custom_vision_head_width > self.custom_vision_width:  # open_clip builds width // head_width heads
            raise ValueError(
                f"model.config.custom_vision_head_width={self.custom_vision_head_width} must not exceed "
                f"model.config.custom_vision_width={self.custom_vision_width} (no attention head left)"
            )
        if self.custom_text_width % self.custom_text_heads:
            raise ValueError(
                f"model.config.custom_text_heads={self.custom_text_heads} must divide "
                f"model.config.custom_text_width={self.custom_text_width}"
            )
        if self.clip_model != "custom" and self.pretrained is None and not self.random_init:
            raise ValueError(
                f"model.config.pretrained is not set: supply CLIP {self.clip_model} weights (a local open_clip "
                f"state-dict file, OpenAI's TorchScript {self.clip_model}.pt, or the open_clip tag 'openai'), or set "
                "model.config.random_init: true for a randomly initialised model"
            )
        if self.quick_gelu is False and self.pretrained == "openai":
            raise ValueError(
                "model.config.quick_gelu=false contradicts model.config.pretrained='openai': OpenAI's CLIP "
                "weights were trained with QuickGELU (leave quick_gelu null or set it true)"
            )
        if self.custom_image_size % self.custom_patch_size:
            raise ValueError(
                f"model.config.custom_patch_size={self.custom_patch_size} must divide "
                f"custom_image_size={self.custom_image_size}"
            )


# --------------------------------------------------------------------------------------------------- CLIP


def _is_torchscript(path: Path) -> bool:
    """OpenAI's original checkpoints are TorchScript archives (a zip with ``code/`` and ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def uses_quick_gelu(cfg: SHENetConfig) -> bool:
    """The resolved ``model.config.quick_gelu``: the explicit value; else, for an open_clip pretrained tag, what
    open_clip records for those weights (True for ``openai``, False e.g. for LAION's); else True for the OpenAI
    architectures (a local file: OpenAI's weights, spec §3.1) and False for ``custom``."""
    if cfg.quick_gelu is not None:
        return cfg.quick_gelu
    if cfg.clip_model == "custom":
        return False
    if cfg.pretrained is not None:
        from open_clip.pretrained import get_pretrained_cfg

        tag = get_pretrained_cfg(cfg.clip_model, cfg.pretrained)
        if tag:
            return bool(tag.get("quick_gelu", False))
    return True


def check_architecture(clip: nn.Module, clip_model: str, source: str) -> None:
    """Raise when ``clip`` (loaded from ``source``) is not the open_clip architecture ``clip_model``: compares the
    patch size, the vision/text widths and depths and the embedding dim with open_clip's model config."""
    import open_clip

    want = open_clip.get_model_config(clip_model)
    if want is None:
        return
    vis, txt = want["vision_cfg"], want["text_cfg"]
    expected = {
        "patch size": vis["patch_size"],
        "vision width": vis["width"],
        "vision layers": vis["layers"],
        "text width": txt["width"],
        "text layers": txt["layers"],
        "embed dim": want["embed_dim"],
    }
    found = {
        "patch size": clip.visual.conv1.kernel_size[0],
        "vision width": clip.visual.conv1.out_channels,
        "vision layers": len(clip.visual.transformer.resblocks),
        "text width": clip.transformer.width,
        "text layers": len(clip.transformer.resblocks),
        "embed dim": int(clip.text_projection.shape[1]),
    }
    diff = {k: (found[k], expected[k]) for k in expected if found[k] != expected[k]}
    if diff:
        detail = ", ".join(f"{k} {f} (expected {e})" for k, (f, e) in diff.items())
        raise ValueError(
            f"model.config.pretrained={source!r} does not hold a {clip_model} CLIP: {detail}; set "
            "model.config.clip_model to the checkpoint's architecture or supply the matching checkpoint"
        )


def build_clip(cfg: SHENetConfig) -> nn.Module:
    """An open_clip ``CLIP`` from ``cfg`` (spec §3.1, §9), with the visual tower returning patch tokens.

    The MLP activation follows :func:`uses_quick_gelu`: open_clip's ``create_model`` builds nn.GELU for
    ``ViT-B-32``/``ViT-B-16`` whatever weights it loads (only its TorchScript loader builds QuickGELU), so OpenAI
    weights given as a state-dict file or as the ``openai`` tag need ``force_quick_gelu``.

    Raises:
        FileNotFoundError / ValueError: missing weights, naming ``model.config.pretrained``; a TorchScript
        checkpoint of another architecture, naming ``model.config.clip_model``.
    """
    import open_clip
    from open_clip.model import CLIP

    if cfg.clip_model == "custom":
        vision = dict(
            image_size=cfg.custom_image_size,
            patch_size=cfg.custom_patch_size,
            width=cfg.custom_vision_width,
            layers=cfg.custom_vision_layers,
            head_width=cfg.custom_vision_head_width,
        )
        text = dict(
            context_length=cfg.custom_context_length,
            vocab_size=49408,
            width=cfg.custom_text_width,
            heads=cfg.custom_text_heads,
            layers=cfg.custom_text_layers,
        )
        clip = CLIP(cfg.custom_embed_dim, vision, text, quick_gelu=uses_quick_gelu(cfg))
        if cfg.pretrained is not None:
            clip.load_state_dict(read_torch(cfg.pretrained, "model.config.pretrained"))
    elif cfg.pretrained is None:
        clip = open_clip.create_model(cfg.clip_model, pretrained=None, force_quick_gelu=uses_quick_gelu(cfg))
    else:
        path = Path(cfg.pretrained)
        if path.suffix in (".pt", ".pth", ".bin", ".safetensors") and not path.is_file():
            raise FileNotFoundError(
                f"model.config.pretrained={cfg.pretrained!r}: no such file; supply the CLIP "
                f"{cfg.clip_model} checkpoint (OpenAI's {cfg.clip_model}.pt or an open_clip "
                "state dict)"
            )
        if path.is_file() and _is_torchscript(path):
            if cfg.quick_gelu is False:
                raise ValueError(
                    f"model.config.quick_gelu=false, but {cfg.pretrained!r} is OpenAI's TorchScript CLIP, which "
                    "open_clip always builds with QuickGELU (the activation it was trained with)"
                )
            clip = open_clip.load_openai_model(str(path), device="cpu")
            check_architecture(clip, cfg.clip_model, cfg.pretrained)
        else:
            clip = open_clip.create_model(
                cfg.clip_model, pretrained=cfg.pretrained, force_quick_gelu=uses_quick_gelu(cfg)
            )
    # open_clip's TorchScript loader returns the model in eval mode, and Lightning keeps each submodule's mode when
    # fit starts: CLIP is fine-tuned end to end (spec §3.1), so it starts in train mode like every other module
    clip.train()
    clip.visual.output_tokens = True
    return clip


class TemporalTransformer(nn.Module):
    """CLIP4Clip's seqTransf head: ``f'_t = f_t + Transformer(f_t + pos_t)`` (residual to the input frames).

    Args:
        width: D; layers, heads: transformer size; max_frames: number of frame position embeddings.
    """

    def __init__(self, width: int, layers: int, heads: int, max_frames: int):
        super().__init__()
        from open_clip.transformer import QuickGELU, Transformer

        self.frame_position = nn.Embedding(max_frames, width)
        # CLIP4Clip's TransformerClip blocks use QuickGELU, like the OpenAI text blocks its weights come from
        self.transformer = Transformer(width, layers, heads, act_layer=QuickGELU)
        nn.init.normal_(self.frame_position.weight, std=0.01)

    def init_from_clip(self, clip: nn.Module) -> None:
        """CLIP4Clip init: blocks copied from the first text-transformer blocks and position embeddings from CLIP's
        text positional embedding, when the widths match (otherwise the random init stays)."""
        text_blocks = clip.transformer.resblocks
        if clip.transformer.width != self.frame_position.weight.shape[1]:
            return
        for mine, theirs in zip(self.transformer.resblocks, text_blocks, strict=False):
            mine.load_state_dict(theirs.state_dict())
        n = min(self.frame_position.weight.shape[0], clip.positional_embedding.shape[0])
        with torch.no_grad():
            self.frame_position.weight[:n] = clip.positional_embedding[:n]

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames (B, T, D), frame_mask (B, T) bool → (B, T, D).

        Frames attend to the valid frames of their video. A video without any valid frame (all padding, e.g. an
        unreadable video kept by ``data.on_corrupt: skip``) attends over all its frames instead: with every key masked
        its attention rows would be softmax over −inf only, which some attention kernels turn into NaN. Its outputs
        are finite and, its mask being all false, unused downstream."""
        T = frames.shape[1]
        if T > self.frame_position.weight.shape[0]:
            raise ValueError(f"seqTransf: {T} frames but model.config.max_frames={self.frame_position.weight.shape[0]}")
        x = frames + self.frame_position.weight[:T][None]  # (B, T, D)
        keys = frame_mask | ~frame_mask.any(-1, keepdim=True)  # (B, T) no video without an attendable frame
        pad = torch.zeros(frame_mask.shape, dtype=x.dtype, device=x.device)
        pad = pad.masked_fill(~keys, float("-inf"))  # (B, T)
        heads = self.transformer.resblocks[0].attn.num_heads
        attn_mask = pad[:, None, None, :].expand(-1, heads, T, -1).reshape(-1, T, T)  # (B·heads, T, T)
        return frames + self.transformer(x, attn_mask=attn_mask)  # (B, T, D)


# ------------------------------------------------------------------------------------------- feature bundles


@dataclass
class TextFeatures:
    """Encoded texts (spec §3.3). Shapes: sentence (B, D); verbs/nouns/adjs (B, V|M|A, D) raw node features;
    verbs_enh/nouns_enh the hierarchy-enhanced ones; masks (B, V|M|A) bool; noun_parent (B, M) long (verb slot or
    -1 = root)."""

    sentence: torch.Tensor
    verbs: torch.Tensor
    nouns: torch.Tensor
    verbs_enh: torch.Tensor
    nouns_enh: torch.Tensor
    verb_mask: torch.Tensor
    noun_mask: torch.Tensor
    noun_parent: torch.Tensor

    def apply(self, fn) -> TextFeatures:
        """A copy with ``fn`` applied to every tensor (gather, slice, move)."""
        return TextFeatures(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return self.sentence.shape[0]


@dataclass
class VideoFeatures:
    """Encoded videos (spec §3.4). Shapes: video (B, D); frames (B, T, D); patches (B, T, P, D); frame_mask (B, T)."""

    video: torch.Tensor
    frames: torch.Tensor
    patches: torch.Tensor
    frame_mask: torch.Tensor

    def apply(self, fn) -> VideoFeatures:
        """A copy with ``fn`` applied to every tensor (gather, slice, move)."""
        return VideoFeatures(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return self.video.shape[0]


# ------------------------------------------------------------------------------------- L2 normalisation


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / max(‖x‖₂, ε)`` along ``dim`` (:func:`torch.nn.functional.normalize`), with an ε the dtype can hold.

    F.normalize's ε = 1e-12 rounds to 0 in float16 (``precision: 16-true``), so a zero vector — a padding node, an
    all-padding video's embedding or its guided frame and region features — would give 0/0 = NaN, and NaN
    gradients behind it. Here ε = max(1e-12, smallest normal number of the dtype): float16's 2⁻¹⁴ ≈ 6.1e-5 (a zero
    vector stays zero), and 1e-12 in float32 and bfloat16, whose results are F.normalize's, bit for bit."""
    return F.normalize(x, dim=dim, eps=max(1e-12, torch.finfo(x.dtype).tiny))


# ----------------------------------------------------------------------------------------- text hierarchy


def _children_mean(children: torch.Tensor, child_mask: torch.Tensor, child_parent: torch.Tensor, n_parents: int):
    """Mean of each parent's children. children (B, C, D), child_mask (B, C), child_parent (B, C) in [-1, n_parents)
    → (mean (B, n_parents, D), has_children (B, n_parents) bool)."""
    slots = torch.arange(n_parents, device=children.device)
    assign = (child_parent[..., None] == slots) & child_mask[..., None]  # (B, C, n_parents)
    assign = assign.to(children.dtype)
    count = assign.sum(1)  # (B, n_parents)
    total = torch.einsum("bcp,bcd->bpd", assign, children)  # (B, n_parents, D)
    return total / count.clamp_min(1.0)[..., None], count > 0


def hierarchy_enhance(
    verbs: torch.Tensor,
    nouns: torch.Tensor,
    adjs: torch.Tensor | None,
    noun_mask: torch.Tensor,
    adj_mask: torch.Tensor | None,
    noun_parent: torch.Tensor,
    adj_parent: torch.Tensor | None,
    mode: TextEnhance = "mean",
    gate_noun: torch.Tensor | None = None,
    gate_verb: torch.Tensor | None = None,
    use_nouns: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bottom-up hierarchy enhancement (spec §3.3), on L2-normalised node features:

        n'_m = norm( n_m + mean_{a ∈ adj(m)} a )          u'_j = norm( u_j + mean_{m ∈ nouns(j)} n'_m )

    ``gated``: ``x' = norm( x + σ(w·[x; c̄]) c̄ )`` with learnable vectors ``w`` (``gate_noun``, ``gate_verb``; (2D,)).
    ``none``: the inputs unchanged. Nodes without children are only re-normalised. ``adjs=None`` skips the adjective
    step (the adj level switched off); ``use_nouns=False`` skips the noun step (the noun level switched off: verbs
    are only re-normalised, so nouns cannot reach the verb similarity).

    Shapes: verbs (B, V, D), nouns (B, M, D), adjs (B, A, D); masks (B, M|A) bool; noun_parent (B, M), adj_parent
    (B, A) long (-1 = root). Returns (verbs', nouns'), same shapes.

    Reconstruction: the paper's enhancement equations are not transcribed (spec §3.3).
    """
    check_choice("model.config.text_enhance", mode, get_args(TextEnhance))  # anything else would mean "mean"
    if mode == "none":
        return verbs, nouns

    def combine(x, child_mean, has, gate):
        if mode == "gated":
            g = torch.sigmoid(torch.cat([x, child_mean], -1) @ gate)[..., None]  # (B, N, 1)  σ(w·[x; c̄])
            y = x + g * child_mean
        else:
            y = x + child_mean  # x + mean of children
        return torch.where(has[..., None], l2_normalize(y, dim=-1), l2_normalize(x, dim=-1))

    if adjs is not None:
        adj_mean, has_adj = _children_mean(adjs, adj_mask, adj_parent, nouns.shape[1])  # (B, M, D)
        nouns_enh = combine(nouns, adj_mean, has_adj, gate_noun)
    else:
        nouns_enh = l2_normalize(nouns, dim=-1)
    if not use_nouns:
        return l2_normalize(verbs, dim=-1), nouns_enh
    noun_mean, has_noun = _children_mean(nouns_enh, noun_mask, noun_parent, verbs.shape[1])  # (B, V, D)
    verbs_enh = combine(verbs, noun_mean, has_noun, gate_verb)
    return verbs_enh, nouns_enh


# ------------------------------------------------------------------------------- syntax-guided similarity


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` in float32 with masked entries at weight 0 (an all-masked row gives all zeros)."""
    logits = logits.float().masked_fill(~mask, float("-inf"))
    w = torch.softmax(logits, dim=dim)
    return torch.nan_to_num(w, nan=0.0)


def syntax_guided_similarity(
    text: TextFeatures,
    video: VideoFeatures,
    tau_frame: float | torch.Tensor = 0.01,
    tau_patch: float | torch.Tensor = 0.01,
    guide_visual: bool = True,
    pooling: GuidedPooling = "softmax",
    noun_temporal: NounTemporal = "parent",
    use_verbs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Level similarities S1, S2, S3 of every text against every video (spec §3.5-3.6), each (B_t, B_v):

        S1(i,k) = cos(s_i, v_k)
        α_{j,t} = softmax_t( cos(u_j, f_t) / τ_f )           g_j = norm( Σ_t α_{j,t} f_t )          (verb → frames)
        α_{0,t} = softmax_t( cos(s_i, f_t) / τ_f )                                                    (root → frames)
        β_{m,t,q} = softmax_q( cos(n_m, p_{t,q}) / τ_p )      r_m = norm( Σ_t α_{π(m),t} Σ_q β_{m,t,q} p_{t,q} )
        S2(i,k) = mean_j cos(u'_j, g_j)                       S3(i,k) = mean_m cos(n'_m, r_m)

    Attention uses the raw node features (u, n), the scores the enhanced ones (u', n'). ``guide_visual=False``: g =
    mean of valid frames, r = mean of all valid patches, whatever ``pooling`` says. ``pooling="max"`` (with
    ``guide_visual``): S2 = mean_j max_t cos(u'_j, f_t) and S3 = mean_m max_{t,q} cos(n'_m, p_{t,q}) through
    :func:`mmzoo.ops.token_max_sim` (the τ → 0 limit, without the hierarchical frame gating). ``noun_temporal``: the
    frame weights that pool r over time — ``parent`` (α_{π(m)}, α_0 for root nouns), ``root`` (α_0) or ``uniform``;
    ``use_verbs=False`` makes ``parent`` behave as ``root``. A text without verbs/nouns gets S2/S3 = 0 (the
    aggregation leaves that level out).

    Shapes: text.* (B_t, ...), video.* (B_v, ...) as in :class:`TextFeatures` / :class:`VideoFeatures`.
    """
    # anything else would silently mean softmax pooling / the parent's frame weights
    check_choice("model.config.guided_pooling", pooling, get_args(GuidedPooling))
    check_choice("model.config.noun_temporal", noun_temporal, get_args(NounTemporal))
    s, fm = text.sentence, video.frame_mask  # (B_t, D), (B_v, T)
    f, p = video.frames, video.patches  # (B_v, T, D), (B_v, T, P, D)
    S1 = s @ video.video.T  # (B_t, B_v)
    vm, nm = text.verb_mask, text.noun_mask  # (B_t, V), (B_t, M)
    n_verbs = vm.sum(-1).clamp_min(1).to(S1.dtype)  # (B_t,)
    n_nouns = nm.sum(-1).clamp_min(1).to(S1.dtype)  # (B_t,)
    Bv, T, P, D = p.shape

    if guide_visual and pooling == "max":
        S2, _ = token_max_sim(text.verbs_enh, vm, f, fm)  # (B_t, B_v)  mean_j max_t
        patch_mask = fm[:, :, None].expand(-1, -1, P).reshape(Bv, T * P)  # (B_v, T·P)
        S3, _ = token_max_sim(text.nouns_enh, nm, p.reshape(Bv, T * P, D), patch_mask)  # (B_t, B_v)
        return S1, S2.to(S1.dtype), S3.to(S1.dtype)

    if not guide_visual:  # spec §3.9: the means, whichever guided pooling the config names
        fw = fm.to(f.dtype) / fm.sum(-1, keepdim=True).clamp_min(1).to(f.dtype)  # (B_v, T) uniform frame weights
        g = l2_normalize(torch.einsum("bt,btd->bd", fw, f), dim=-1)  # (B_v, D) mean frame
        r = l2_normalize(torch.einsum("bt,btqd->bd", fw, p), dim=-1)  # (B_v, D) mean patch
        S2 = torch.einsum("ajd,bd->abj", text.verbs_enh, g)  # (B_t, B_v, V)
        S3 = torch.einsum("amd,bd->abm", text.nouns_enh, r)  # (B_t, B_v, M)
    else:
        frame_valid = fm[None, :, None, :]  # (1, B_v, 1, T)
        # verb -> frames (temporal guidance)
        alpha = masked_softmax(torch.einsum("ajd,btd->abjt", text.verbs, f) / tau_frame, frame_valid)  # (B_t,B_v,V,T)
        g = l2_normalize(torch.einsum("abjt,btd->abjd", alpha.to(f.dtype), f), dim=-1)  # (B_t, B_v, V, D)
        S2 = torch.einsum("ajd,abjd->abj", text.verbs_enh, g)  # (B_t, B_v, V)  cos(u'_j, g_j)
        # frame weights for each noun: its parent's, the root's, or uniform
        alpha0 = masked_softmax(torch.einsum("ad,btd->abt", s, f) / tau_frame, fm[None])  # (B_t, B_v, T)
        if noun_temporal == "uniform":
            w_noun = (fm.to(alpha0.dtype) / fm.sum(-1, keepdim=True).clamp_min(1))[None, :, None, :]
            w_noun = w_noun.expand(s.shape[0], -1, text.nouns.shape[1], -1)  # (B_t, B_v, M, T)
        elif noun_temporal == "root" or not use_verbs:
            w_noun = alpha0[:, :, None, :].expand(-1, -1, text.nouns.shape[1], -1)  # (B_t, B_v, M, T)
        else:
            parent = text.noun_parent  # (B_t, M)
            idx = parent.clamp_min(0)[:, None, :, None].expand(-1, Bv, -1, T)  # (B_t, B_v, M, T)
            from_verb = torch.gather(alpha, 2, idx)  # (B_t, B_v, M, T)  α_{π(m), t}
            w_noun = torch.where((parent >= 0)[:, None, :, None], from_verb, alpha0[:, :, None, :])
        # noun -> patches within each frame (spatial guidance), pooled over time with w_noun
        beta = torch.softmax(
            (torch.einsum("amd,btqd->abmtq", text.nouns, p) / tau_patch).float(), -1
        )  # (B_t,B_v,M,T,P)
        gamma = (w_noun[..., None] * beta).to(p.dtype)  # (B_t, B_v, M, T, P)  α_{π(m),t} β_{m,t,q}
        r = l2_normalize(torch.einsum("abmtq,btqd->abmd", gamma, p), dim=-1)  # (B_t, B_v, M, D)
        S3 = torch.einsum("amd,abmd->abm", text.nouns_enh, r)  # (B_t, B_v, M)  cos(n'_m, r_m)
    S2 = (S2 * vm[:, None, :]).sum(-1) / n_verbs[:, None]  # (B_t, B_v)  mean over verbs
    S3 = (S3 * nm[:, None, :]).sum(-1) / n_nouns[:, None]  # (B_t, B_v)  mean over nouns
    return S1, S2.to(S1.dtype), S3.to(S1.dtype)


def sentence_guided_similarity(
    text: TextFeatures, video: VideoFeatures, tau_frame: float | torch.Tensor
) -> torch.Tensor:
    """Sentence level with a text-conditioned video feature (root → frames):

        α_{0,t} = softmax_t( cos(s_i, f_t) / τ_f )        S1(i,k) = cos( s_i, norm(Σ_t α_{0,t} f_t) )

    text.sentence (B_t, D), video.frames (B_v, T, D) → (B_t, B_v). Reconstruction (config ``sentence_guidance``).
    """
    s, f, fm = text.sentence, video.frames, video.frame_mask
    alpha0 = masked_softmax(torch.einsum("ad,btd->abt", s, f) / tau_frame, fm[None])  # (B_t, B_v, T)
    v = l2_normalize(torch.einsum("abt,btd->abd", alpha0.to(f.dtype), f), dim=-1)  # (B_t, B_v, D)
    return torch.einsum("ad,abd->ab", s, v)  # (B_t, B_v)


def aggregate_similarity(levels: torch.Tensor, available: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """S(i,k) = Σ_{l ∈ avail(i)} w_l S_l(i,k) / Σ_{l ∈ avail(i)} w_l   (spec §3.6).

    levels (3, B_t, B_v); available (B_t, 3) bool (level 1 always); weights (3,) ≥ 0 → (B_t, B_v).
    """
    w = weights[None, :] * available.to(weights.dtype)  # (B_t, 3)
    w = w / w.sum(-1, keepdim=True)  # renormalised over available levels
    return torch.einsum("il,lik->ik", w.to(levels.dtype), levels)  # (B_t, B_v)


# -------------------------------------------------------------------------------------------------- SHE-Net


def _to(x: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    """Move to ``device``; floating tensors also to ``dtype`` (masks and indices keep theirs)."""
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)


class SHENet(nn.Module):
    """SHE-Net: CLIP towers + syntax hierarchy node features + syntax-guided similarity.

    ``encode_text`` / ``encode_video`` give :class:`TextFeatures` / :class:`VideoFeatures`; ``similarity`` scores
    every text against every video and returns ``{"S": (B_t, B_v), "S1", "S2", "S3"}``; ``similarity_matrix`` does
    the same in chunks for evaluation.
    """

    def __init__(self, config: SHENetConfig):
        super().__init__()
        self.config = config
        if config.guide_visual and not config.guide_similarity and not config.sentence_guidance:
            log.warning(
                "model.config.guide_visual has no effect with guide_similarity=false and "
                "sentence_guidance=false: S = cos(s, mean frame), the meanP baseline (see README, "
                "'Deviations and reconstructions')"
            )
        self.clip = build_clip(config)
        D = self.embed_dim
        self.temporal = None
        if config.temporal == "seqTransf":
            if D % config.temporal_heads:  # the seqTransf blocks are D wide
                dim = (
                    f"model.config.custom_embed_dim={D}"
                    if config.clip_model == "custom"
                    else f"the embedding dim {D} of model.config.clip_model={config.clip_model!r}"
                )
                raise ValueError(f"model.config.temporal_heads={config.temporal_heads} must divide {dim}")
            self.temporal = TemporalTransformer(D, config.temporal_layers, config.temporal_heads, config.max_frames)
            self.temporal.init_from_clip(self.clip)
        self.gate_noun = self.gate_verb = None
        if config.text_enhance == "gated":
            self.gate_noun = nn.Parameter(torch.zeros(2 * D))  # zero-init gates (spec §3.3)
            self.gate_verb = nn.Parameter(torch.zeros(2 * D))
        self.log_tau = None
        if config.learnable_tau:
            self.log_tau = nn.Parameter(torch.tensor([math.log(config.tau_frame), math.log(config.tau_patch)]))
        self.sim_logits = nn.Parameter(torch.zeros(3)) if config.sim_weighting == "learned" else None
        self.register_buffer("fixed_weights", torch.tensor(config.sim_weights, dtype=torch.float32), persistent=False)
        for p in self.unused_parameters():
            p.requires_grad_(False)

    def unused_parameters(self) -> list[nn.Parameter]:
        """The learnable extras that the config's similarity never reaches: they are frozen (kept, so checkpoints
        keep their keys; left out of the optimiser by :func:`shenet.optim.param_groups`), since a trainable
        parameter without a gradient stops DDP (``find_unused_parameters=False``).

        - ``gate_noun``: used only with the syntax-guided similarity and the adjective level (nouns' children);
        - ``gate_verb``: only with the syntax-guided similarity and the noun level (verbs' children);
        - ``log_tau``: only with the guided visual representation, through the softmax pooling of S2/S3 or the
          text-conditioned sentence level (``sentence_guidance``);
        - ``sim_logits``: only with the syntax-guided similarity (otherwise S = S1).
        """
        cfg = self.config
        gs, levels = cfg.guide_similarity, cfg.levels
        tau_used = cfg.guide_visual and (cfg.sentence_guidance or (gs and cfg.guided_pooling == "softmax"))
        used = {
            "gate_noun": gs and "adj" in levels,
            "gate_verb": gs and "noun" in levels,
            "log_tau": tau_used,
            "sim_logits": gs,
        }
        return [getattr(self, n) for n, u in used.items() if getattr(self, n) is not None and not u]

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[1])

    @property
    def logit_scale(self) -> torch.Tensor:
        """λ = exp(CLIP logit scale), clamped at 100 (spec §3.7)."""
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def taus(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        if self.log_tau is None:
            return self.config.tau_frame, self.config.tau_patch
        t = self.log_tau.exp()
        return t[0], t[1]

    def level_weights(self) -> torch.Tensor:
        """(w1, w2, w3): fixed config weights, or softmax of the learned logits."""
        if self.sim_logits is not None:
            return torch.softmax(self.sim_logits.float(), 0)
        return self.fixed_weights

    # -- text ---------------------------------------------------------------------------------------------------
    def encode_text(self, batch: dict[str, torch.Tensor]) -> TextFeatures:
        """Sentence and node features (spec §3.3) from the ``text_*`` tensors of :func:`shenet.tokenization.
        collate_texts`: input_ids (B, L); verb/noun/adj_pool (B, V|M|A, L); masks; parents."""
        ids = batch["text_input_ids"]  # (B, L)
        clip = self.clip
        L = ids.shape[1]
        if L > clip.positional_embedding.shape[0]:
            raise ValueError(
                f"texts of {L} tokens exceed CLIP's context length {clip.positional_embedding.shape[0]}"
                " (data.max_words)"
            )
        x = clip.token_embedding(ids) + clip.positional_embedding[:L]  # (B, L, W)
        x = clip.transformer(x, attn_mask=clip.attn_mask[:L, :L])  # (B, L, W)
        x = clip.ln_final(x)  # (B, L, W)
        tokens = x @ clip.text_projection  # (B, L, D)  every token projected like the EOT token
        eot = ids.argmax(-1)  # (B,)  EOT has the largest id
        sentence = l2_normalize(tokens[torch.arange(ids.shape[0], device=ids.device), eot], dim=-1)  # (B, D)

        def pool(name: str) -> torch.Tensor:  # node feature = mean of its BPE pieces' features
            return l2_normalize(
                torch.einsum("bnl,bld->bnd", batch[f"text_{name}_pool"].to(tokens.dtype), tokens), dim=-1
            )

        verbs, nouns = pool("verb"), pool("noun")  # (B, V, D), (B, M, D)
        vm, nm = batch["text_verb_mask"], batch["text_noun_mask"]
        use_adj = "adj" in self.config.levels
        adjs = pool("adj") if use_adj else None  # (B, A, D)
        verbs_enh, nouns_enh = hierarchy_enhance(
            verbs,
            nouns,
            adjs,
            nm,
            batch["text_adj_mask"] if use_adj else None,
            batch["text_noun_parent"],
            batch["text_adj_parent"] if use_adj else None,
            self.config.text_enhance,
            self.gate_noun,
            self.gate_verb,
            use_nouns="noun" in self.config.levels,
        )
        return TextFeatures(
            sentence, verbs, nouns, verbs_enh, nouns_enh, vm.bool(), nm.bool(), batch["text_noun_parent"]
        )

    # -- video --------------------------------------------------------------------------------------------------
    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> VideoFeatures:
        """video (B, T, 3, H, W) normalised frames, video_mask (B, T) bool → :class:`VideoFeatures` (spec §3.4).

        A video whose mask is all false (an unreadable video fed as padding by ``data.on_corrupt: skip``) is encoded
        as the zero video embedding, with finite frame and patch features; :meth:`similarity` then gives it S = 0
        against every text in every mode (its guided frame and region features are zero too), the loss leaves its
        pair out and :meth:`similarity_matrix` ranks it last."""
        if video.dim() != 5:
            raise ValueError(f"encode_video: expected video (B, T, 3, H, W), got {tuple(video.shape)}")
        B, T = video.shape[:2]
        visual = self.clip.visual
        pooled, tokens = visual(video.flatten(0, 1))  # (B·T, D), (B·T, P, W)
        frames = pooled.view(B, T, -1)  # (B, T, D)
        patches = (tokens @ visual.proj).view(B, T, tokens.shape[1], -1)  # (B, T, P, D)
        mask = video_mask.bool()
        if self.temporal is not None:
            frames = self.temporal(frames, mask)  # (B, T, D)
        frames = l2_normalize(frames, dim=-1)
        patches = l2_normalize(patches, dim=-1)
        w = mask.to(frames.dtype)
        # a video without any valid frame gets the zero vector (0 / 1, and norm(0) = 0): every score with it is 0
        video_emb = l2_normalize((frames * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1), dim=-1)  # (B, D)
        return VideoFeatures(video_emb, frames, patches, mask)

    # -- similarity ---------------------------------------------------------------------------------------------
    def similarity(self, text: TextFeatures, video: VideoFeatures) -> dict[str, torch.Tensor]:
        """Level and aggregated similarities (spec §3.6), each (B_t, B_v): ``{"S", "S1"}``, plus ``"S2"`` / ``"S3"``
        with the syntax-guided similarity when the verb / noun level is in ``model.config.levels`` (a level switched
        off has no similarity, so the per-level loss terms of spec §3.7 never train it)."""
        cfg = self.config
        tau_f, tau_p = self.taus()
        if cfg.guide_visual and cfg.sentence_guidance:
            S1 = sentence_guided_similarity(text, video, tau_f)  # (B_t, B_v) text-conditioned video feature
        else:
            S1 = text.sentence @ video.video.T  # (B_t, B_v) CLIP4Clip meanP
        if not cfg.guide_similarity:
            return {"S": S1, "S1": S1}
        _, S2, S3 = syntax_guided_similarity(
            text,
            video,
            tau_f,
            tau_p,
            cfg.guide_visual,
            cfg.guided_pooling,
            cfg.noun_temporal,
            use_verbs="verb" in cfg.levels,
        )
        available = torch.stack(
            [
                torch.ones_like(text.verb_mask[:, 0]),
                text.verb_mask.any(-1) & ("verb" in cfg.levels),
                text.noun_mask.any(-1) & ("noun" in cfg.levels),
            ],
            dim=-1,
        )  # (B_t, 3)
        S = aggregate_similarity(torch.stack([S1, S2, S3]), available, self.level_weights().to(S1.device))
        out = {"S": S, "S1": S1}
        if "verb" in cfg.levels:
            out["S2"] = S2
        if "noun" in cfg.levels:
            out["S3"] = S3
        return out

    @torch.no_grad()
    def similarity_matrix(
        self,
        text: TextFeatures,
        video: VideoFeatures,
        text_chunk: int = 32,
        video_chunk: int = 256,
        device: torch.device | None = None,
        progress: bool = False,
    ):
        """The aggregated S for all texts × all videos, computed in (text_chunk × video_chunk) blocks on ``device``
        (features may live on the CPU, e.g. in fp16); returns float32 (N_t, N_v) on the CPU.

        A video without any valid frame has no content to match: its column is −inf (its S of 0 would rank it above
        every real video that scores below 0), so it ranks after every other video, and
        :func:`shenet.metrics.retrieval_ranks` ranks its own captions' ground truth, and its video→text query, last.

        Videos are the outer loop: each video chunk (its patch features are by far the largest input) is moved to
        ``device`` once, and its column of S comes back to the CPU in one copy."""
        from tqdm.auto import tqdm

        device = device or self.fixed_weights.device
        dtype = next(self.parameters()).dtype
        Nt, Nv = len(text), len(video)
        out = torch.empty(Nt, Nv)
        starts = range(0, Nv, video_chunk)
        for b in tqdm(starts, desc="similarity (video chunks)", total=len(starts), disable=not progress, leave=False):
            v = video.apply(lambda x, b=b: _to(x[b : b + video_chunk], device, dtype))
            column = torch.empty(Nt, min(video_chunk, Nv - b), device=device)
            for a in range(0, Nt, text_chunk):
                t = text.apply(lambda x, a=a: _to(x[a : a + text_chunk], device, dtype))
                S = self.similarity(t, v)["S"].float()  # (text_chunk, video_chunk)
                column[a : a + text_chunk] = S.masked_fill(~v.frame_mask.any(-1)[None], float("-inf"))
            out[:, b : b + video_chunk] = column.cpu()
        return out
