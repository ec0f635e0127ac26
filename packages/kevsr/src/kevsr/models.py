"""The two-stream model of "Knowledge-enhanced Multi-perspective Video Representation Learning for Scene
Recognition" (spec §3): the temporal stream S1 (used at inference) and the knowledge-enhanced non-temporal
stream S2 (training only), both giving hierarchical two-level label scores.

Shapes: B videos, T = N_f keyframes, R = N_r regions per frame, K = N_k keywords, D = d latent width,
G = KG embedding width (300), L1 / L2 = labels of level 1 / level 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from mmzoo.config import check_choice, check_literal_fields, check_range
from mmzoo.data import read_json
from torch import nn

__all__ = [
    "KEVSRConfig",
    "FrameRefiner",
    "HierarchicalScores",
    "TemporalStream",
    "RegionReasoner",
    "LocalAttentionPool",
    "KeywordFusion",
    "LabelMatchingHead",
    "KeywordOffsets",
    "remap_rows",
    "NonTemporalStream",
    "KEVSRModel",
    "refine_level2",
    "bert_cls_token_id",
]


@dataclass
class KEVSRConfig:
    """Architecture of both streams (spec §3.1–3.3, §3.6–3.7). Widths of the input features come from the files."""

    dim: int = 768
    """Latent size d (spec §3.7; grid {192, 384, 768})."""
    f2d_dim: int = 2048
    """Width of the per-keyframe 2D feature f2D (ResNet)."""
    f3d_dim: int = 1024
    """Width of the per-keyframe 3D feature f3D (I3D)."""
    text_dim: int = 768
    """Width of the description feature f_text (BERT)."""
    region_dim: int = 2048
    """Width of a region feature fR (Faster R-CNN box → ResNet)."""
    kg_dim: int = 300
    """Width of the KG entity embeddings G (ConceptNet Numberbatch: 300)."""
    num_frames: int = 12
    """Keyframes per video N_f (spec §3.7)."""
    num_regions: int = 10
    """Regions per keyframe N_r (not given; reconstruction 10, padded + masked)."""
    num_keywords: int = 10
    """Keywords per video N_k (spec §3.7; written N_r in the paper's settings)."""
    num_level1: int = 6
    """Level-1 labels |L_1| (Koubei: 6); must match hierarchy.json."""
    num_level2: int = 320
    """Level-2 labels |L_2| (Koubei: 320); must match hierarchy.json."""
    dropout: float = 0.5
    """Dropout p (spec §3.1: keep probability 0.5)."""
    refine_hidden_dropout: bool = True
    """Dropout (p = ``dropout``) after the hidden layer of both frame refinements' MLP, e^ref = W2 · Dropout(GELU(W1
    e^con + b1)) + b2, besides the equation's Dropout on e^ref (spec §3.1: "after each MLP hidden layer";
    reconstruction). ``false``: the equation's Dropout only. Either way the state-dict keys are the same."""
    temporal_layers: int = 2
    """Transformer layers of the temporal encoder (reconstruction: 2)."""
    temporal_heads: int = 12
    """Attention heads of the temporal encoder (reconstruction: 12)."""
    temporal_dropout: float = 0.1
    """Dropout inside the temporal Transformer (reconstruction: 0.1)."""
    temporal_init_from_bert: str | None = None
    """Spec §3.2's option ``temporal_encoder.init_from_bert``: a LOCAL transformers BERT folder (``config.json`` +
    weights; nothing is downloaded). Set, S1's encoder is that pre-trained ``BertModel`` (MMBT-style: the frames
    f^g are its input embeddings, after a [CLS] vector that starts from BERT's own [CLS] word embedding; BERT adds
    its position and token-type embeddings and LayerNorm) and ``temporal_layers``, ``temporal_heads`` and
    ``temporal_dropout`` are unused (BERT's config decides). Needs ``dim`` = BERT's hidden_size and
    ``num_frames`` + 1 <= its max_position_embeddings. ``null`` (default): the Transformer encoder above."""
    temporal_bert_config: dict[str, Any] | None = None
    """Written into checkpoints, not set by hand: the architecture (``BertConfig.to_dict()``) of the
    ``temporal_init_from_bert`` encoder. When set, the encoder is built from it without reading the folder, and
    its weights must come from a loaded state dict (a forward pass before that raises)."""
    region_layers: int = 1
    """Transformer layers of the inner-frame region reasoning (reconstruction: 1)."""
    region_heads: int = 12
    """Attention heads of the region Transformer (reconstruction: 12)."""
    assign_softmax_over: Literal["keywords", "frames"] = "keywords"
    """Axis of the keyword-cluster soft assignment a_{j,k} (reconstruction: NetVLAD's, over keywords)."""
    nt_fusion: Literal["knowledge", "mean", "transformer"] = "knowledge"
    """S2 video fusion: keyword clusters (full model), frame mean (w/o-know), Transformer (w/o-know & w-temp)."""
    keyword_source: Literal["kg", "random_shared"] = "kg"
    """Keyword embeddings: the KG vectors of each video's keywords, or N_k learnable vectors shared by all (w/o-kw)."""
    freeze_label_kg: bool = True
    """Keep KG-matched label embeddings frozen (reconstruction; gives label scalability)."""
    freeze_keyword_kg: bool = True
    """Keep the keywords' KG embeddings frozen (reconstruction, spec §7); ``false`` learns a per-term offset,
    initialised at 0, added to each keyword's KG vector (the vocabulary = the KG terms the data module loaded)."""
    init_std: float | None = None
    """Std of the Gaussian init of the Linear weights (spec §3.1: Gaussian; std reconstruction). ``null``
    (default): 1/sqrt(fan_in) per layer, which keeps S2's deep un-normalised chain (value projection → fusion →
    video MLP · label MLP) from vanishing; a fixed 0.02 (BERT's value) makes S2's scores ≈1e-5 at init at
    d = 64 (1000x below S1), so S2 starts at a saddle and learns very slowly."""

    def __post_init__(self) -> None:
        # A misspelt choice would otherwise fall through to another variant (e.g. the frames axis, or the
        # Transformer fusion) without a word; the CLI checks these Literals, a config built in Python does not.
        check_literal_fields(self, "model.config")
        sizes = ("dim", "num_frames", "num_regions", "num_keywords", "num_level1", "num_level2", "kg_dim")
        for key in (*sizes, "f2d_dim", "f3d_dim", "text_dim", "region_dim"):
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        if self.temporal_init_from_bert is None:  # with BERT, its config gives the temporal layers and heads
            # no layer would leave the [CLS] output equal to cls + pos[0] for every video
            check_range("model.config.temporal_layers", self.temporal_layers, ge=1, integer=True)
        check_range("model.config.region_layers", self.region_layers, ge=0, integer=True)  # 0: projection only
        check_range("model.config.temporal_dropout", self.temporal_dropout, ge=0, lt=1)
        heads = ("region_heads",) if self.temporal_init_from_bert else ("temporal_heads", "region_heads")
        for key in heads:  # with BERT, its config gives the temporal heads
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
            if self.dim % getattr(self, key) != 0:
                raise ValueError(f"model.config.{key}={getattr(self, key)} must divide dim={self.dim}")
        if self.init_std is not None:  # null: 1/sqrt(fan_in)
            check_range("model.config.init_std", self.init_std, gt=0)
        check_range("model.config.dropout", self.dropout, ge=0, lt=1)
        if self.temporal_bert_config is not None and self.temporal_init_from_bert is None:
            raise ValueError("model.config.temporal_bert_config is set but temporal_init_from_bert is null")


STREAMS = ("both", "temporal", "nontemporal")

_EXTRA_STATE = "_extra_state"
"""Suffix of a module's ``get_extra_state`` entry in a state dict (torch's name)."""

EMBEDDING_STD = 0.02
"""Std of the randomly initialised embedding tables (learnable label vectors, shared w/o-kw keywords, [CLS])."""


def _mlp(dim_in: int, hidden: int, dim_out: int, dropout: float) -> nn.Sequential:
    """φ(x) = W2 · Dropout(GELU(W1 x + b1)) + b2 (dropout after the hidden layer: reconstruction)."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim_out))


def refine_level2(basic1: torch.Tensor, basic2: torch.Tensor, parent_index: torch.Tensor) -> torch.Tensor:
    """Refined level-2 scores, spec §3.2:  s_{q2} = s'_{1, μ(q2)} + s'_{2, q2}.

    basic1 (B, L1), basic2 (B, L2), parent_index (L2,) = μ. Returns (B, L2).
    """
    # index_select: a parent's gradient sums over its children in a fixed order (the backward of
    # basic1[:, parent_index] sums them in a thread-dependent order on CPU)
    return basic2 + basic1.index_select(1, parent_index)  # (B, L2)


class FrameRefiner(nn.Module):
    """One refinement branch τ ∈ {g, l} (spec §3.2):

        e^con_j = [f2D_j ; f3D_j ; f_text];  e^ref_j = W2 Dropout(GELU(W1 e^con_j + b1)) + b2
        f_j = LayerNorm(Dropout(e^ref_j) + W3 e^con_j)     (W3 without bias: reconstruction)

    Reconstruction: the Dropout after the hidden layer (spec §3.1, "after each MLP hidden layer"; not in the
    paper's equation) is there when ``hidden_dropout`` is true (``model.config.refine_hidden_dropout``).

    Shapes: f2d (B, T, D2), f3d (B, T, D3), text (B, Dt) → (B, T, D).
    """

    def __init__(self, dim_in: int, dim: int, dropout: float, hidden_dropout: bool = True) -> None:
        super().__init__()
        # W1, [GELU, Dropout], W2: activation and hidden dropout share index 1, so W1 and W2 keep the keys mlp.0 and
        # mlp.2 with or without the dropout (checkpoints from before refine_hidden_dropout load unchanged)
        hidden = nn.Sequential(nn.GELU(), nn.Dropout(dropout) if hidden_dropout else nn.Identity())
        self.mlp = nn.Sequential(nn.Linear(dim_in, dim), hidden, nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.residual = nn.Linear(dim_in, dim, bias=False)  # W3
        self.norm = nn.LayerNorm(dim)

    def forward(self, f2d: torch.Tensor, f3d: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = f2d.shape[1]
        e_con = torch.cat([f2d, f3d, text[:, None, :].expand(-1, t, -1)], dim=-1)  # (B, T, D2+D3+Dt)
        return self.norm(self.dropout(self.mlp(e_con)) + self.residual(e_con))  # (B, T, D)


class HierarchicalScores(nn.Module):
    """S1 heads (spec §3.2): per level s'_i = W5^i GELU(W4^i e + b4^i) + b5^i; level 2 refined by the parent."""

    def __init__(self, dim: int, num_level1: int, num_level2: int, dropout: float) -> None:
        super().__init__()
        self.head1 = _mlp(dim, dim, num_level1, dropout)
        self.head2 = _mlp(dim, dim, num_level2, dropout)

    def forward(self, video: torch.Tensor, parent_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """video (B, D) → {"basic1", "basic2", "level1" (B, L1), "level2" (B, L2)} (level* = refined)."""
        b1, b2 = self.head1(video), self.head2(video)  # (B, L1), (B, L2)
        return {"basic1": b1, "basic2": b2, "level1": b1, "level2": refine_level2(b1, b2, parent_index)}


BERT_CLS_TOKEN_ID = 101
"""[CLS] id of the standard BERT vocabularies (bert-base-uncased / -cased), used when the folder names none."""


def bert_cls_token_id(folder: str | Path, config: Any) -> int:
    """The [CLS] token id of a local BERT folder: ``cls_token_id`` of its config.json if set, else the position of
    the tokenizer's cls token (``cls_token`` of tokenizer_config.json, default ``[CLS]``) in tokenizer.json's or
    vocab.txt's vocabulary, else :data:`BERT_CLS_TOKEN_ID` (101)."""
    folder = Path(folder)
    if isinstance(getattr(config, "cls_token_id", None), int):
        return config.cls_token_id
    token = "[CLS]"
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        value = read_json(tok_cfg, "tokenizer_config.json").get("cls_token", token)
        token = value.get("content", token) if isinstance(value, dict) else str(value)
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        tok = read_json(tok_json, "tokenizer.json")
        for added in tok.get("added_tokens") or []:
            if added.get("content") == token:
                return int(added["id"])
        vocab = (tok.get("model") or {}).get("vocab")
        if isinstance(vocab, dict) and token in vocab:
            return int(vocab[token])
    vocab_txt = folder / "vocab.txt"
    if vocab_txt.is_file():
        for i, line in enumerate(vocab_txt.read_text(encoding="utf-8").splitlines()):
            if line.strip() == token:
                return i
    return BERT_CLS_TOKEN_ID


def _bert_architecture(bert_config: Any) -> dict[str, Any]:
    """``BertConfig.to_dict()`` without the classification label maps (irrelevant here, and keyed by ints)."""
    return {k: v for k, v in bert_config.to_dict().items() if k not in ("id2label", "label2id")}


class TemporalStream(nn.Module):
    """S1 (spec §3.2): f^g frames + [CLS] + learned positions → Transformer → e^t = o_0 → hierarchical scores.

    With ``temporal_init_from_bert`` (MMBT-style): ``[cls; f^g_1 … f^g_T]`` are a pre-trained ``BertModel``'s
    ``inputs_embeds`` (BERT adds its positions 0…T, token type 0 and LayerNorm; attention over all T + 1 tokens);
    ``cls`` starts from BERT's [CLS] word embedding. BERT's word-embedding table is then dropped (frames replace
    it: it would get no gradient, which DDP rejects, and would add vocab × d weights to every checkpoint), and so
    is its pooler.
    """

    def __init__(self, cfg: KEVSRConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.refine = FrameRefiner(
            cfg.f2d_dim + cfg.f3d_dim + cfg.text_dim, d, cfg.dropout, cfg.refine_hidden_dropout
        )  # τ = g
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.uses_bert = cfg.temporal_init_from_bert is not None
        self.bert_weights_pending = False  # True while a BERT built from its config awaits a state dict
        if self.uses_bert:
            self.encoder = self._build_bert(cfg)
        else:
            self.pos = nn.Parameter(torch.zeros(1, cfg.num_frames + 1, d))
            layer = nn.TransformerEncoderLayer(
                d, cfg.temporal_heads, 4 * d, cfg.temporal_dropout, "gelu", batch_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, cfg.temporal_layers, enable_nested_tensor=False)
        self.heads = HierarchicalScores(d, cfg.num_level1, cfg.num_level2, cfg.dropout)
        self.num_frames = cfg.num_frames

    def _build_bert(self, cfg: KEVSRConfig) -> nn.Module:
        """The pre-trained BERT of ``temporal_init_from_bert`` (cls ← its [CLS] word embedding), or, with
        ``temporal_bert_config`` (a checkpoint's model), the same architecture awaiting the checkpoint's weights."""
        from transformers import BertConfig, BertModel

        path = cfg.temporal_init_from_bert
        if cfg.temporal_bert_config is not None:
            bert = BertModel(BertConfig.from_dict(cfg.temporal_bert_config), add_pooling_layer=False)
            self.bert_weights_pending = True
            cls_id = None
        else:
            if not (Path(path) / "config.json").is_file():
                raise FileNotFoundError(
                    f"model.config.temporal_init_from_bert={path!r}: no local BERT folder there (config.json "
                    "and weights, as save_pretrained writes them)"
                )
            bert = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True)
            cls_id = bert_cls_token_id(path, bert.config)
        bert.float().train()  # from_pretrained returns eval mode (no dropout); the stream's mode is set by its owner
        bc = bert.config
        if bc.hidden_size != cfg.dim:
            raise ValueError(
                f"model.config.dim={cfg.dim} must equal the hidden_size={bc.hidden_size} of the BERT at "
                f"model.config.temporal_init_from_bert={path!r}"
            )
        if cfg.num_frames + 1 > bc.max_position_embeddings:
            raise ValueError(
                f"model.config.num_frames={cfg.num_frames} + 1 ([CLS]) exceeds the max_position_embeddings="
                f"{bc.max_position_embeddings} of the BERT at model.config.temporal_init_from_bert={path!r}"
            )
        if cls_id is not None:
            if not 0 <= cls_id < bc.vocab_size:
                raise ValueError(f"[CLS] id {cls_id} outside the vocabulary ({bc.vocab_size}) of the BERT at {path!r}")
            with torch.no_grad():
                self.cls.copy_(bert.get_input_embeddings().weight[cls_id].view(1, 1, -1))
        self.bert_architecture = _bert_architecture(bc)
        bert.embeddings.word_embeddings = None  # frames are the input embeddings (see the class docstring)
        return bert

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:  # noqa: ANN001 (torch hook signature)
        if self.uses_bert and any(k.startswith(prefix + "encoder.") for k in state_dict):
            self.bert_weights_pending = False
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, batch: dict[str, torch.Tensor], parent_index: torch.Tensor) -> dict[str, torch.Tensor]:
        f_g = self.refine(batch["f2d"], batch["f3d"], batch["text"])  # (B, T, D)
        b, t, _ = f_g.shape
        if t > self.num_frames:
            raise ValueError(f"{t} keyframes but model.config.num_frames={self.num_frames} position embeddings")
        if self.uses_bert:
            if self.bert_weights_pending:
                raise RuntimeError(
                    "model.config.temporal_bert_config is set, so the BERT encoder was built without weights: load a "
                    "checkpoint's state dict first (to start from the folder, set temporal_bert_config: null)"
                )
            tokens = torch.cat([self.cls.expand(b, -1, -1), f_g], dim=1)  # (B, T+1, D); BERT adds the positions
            mask = torch.ones(b, t + 1, dtype=torch.long, device=f_g.device)  # every keyframe is real
            e_t = self.encoder(inputs_embeds=tokens, attention_mask=mask).last_hidden_state[:, 0]  # (B, D)
            return self.heads(e_t, parent_index)
        tokens = torch.cat([self.cls.expand(b, -1, -1), f_g], dim=1) + self.pos[:, : t + 1]  # (B, T+1, D)
        e_t = self.encoder(tokens)[:, 0]  # (B, D) output at [CLS]
        return self.heads(e_t, parent_index)


class RegionReasoner(nn.Module):
    """Inner-frame reasoning (spec §3.3a.1): Linear + LayerNorm projection, then a Transformer over the R regions
    of each keyframe (no position embedding, key-padding mask). (B, T, R, Dr), mask (B, T, R) → (B, T, R, D)."""

    def __init__(self, cfg: KEVSRConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.proj = nn.Sequential(nn.Linear(cfg.region_dim, d), nn.LayerNorm(d))
        layer = nn.TransformerEncoderLayer(d, cfg.region_heads, 4 * d, cfg.temporal_dropout, "gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.region_layers, enable_nested_tensor=False)

    def forward(self, regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, r, _ = regions.shape
        x = self.proj(regions).flatten(0, 1)  # (B·T, R, D)
        m = mask.flatten(0, 1)  # (B·T, R) True = valid
        pad = ~m
        pad[~m.any(dim=1)] = False  # a frame without any region attends to its zero padding (output unused)
        out = self.encoder(x, src_key_padding_mask=pad)  # (B·T, R, D)
        return out.view(b, t, r, -1)  # (B, T, R, D)


class LocalAttentionPool(nn.Module):
    """Local region attention (spec §3.3a.2), single head, d_K = d, no residual:

        α_{j,m} = softmax_m(Q_j · K_{j,m} / √d),  f'^l_j = Σ_m α_{j,m} U_{j,m}

    frame (B, T, D) = f^l, regions (B, T, R, D), mask (B, T, R) → (B, T, D); a frame without valid regions → 0.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def attention(self, frame: torch.Tensor, regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The weights α (B, T, R): sum to 1 over valid regions, all 0 for a frame without any."""
        logits = torch.einsum("btd,btrd->btr", self.q(frame), self.k(regions)).float() * self.scale  # (B, T, R)
        logits = logits.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(logits, dim=-1)
        return torch.nan_to_num(alpha, nan=0.0)  # fully masked rows: softmax of all -inf = NaN → 0

    def forward(self, frame: torch.Tensor, regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        alpha = self.attention(frame, regions, mask).to(regions.dtype)  # (B, T, R)
        return torch.einsum("btr,btrd->btd", alpha, self.v(regions))  # (B, T, D)


class KeywordFusion(nn.Module):
    """Knowledge-enhanced video fusion (spec §3.3b), NetVLAD-style with keyword-generated clusters:

        w_k = φ_w(g_k) ∈ R^d,  c_k = φ_c(g_k) ∈ R,  z_k = φ_z(g_k) ∈ R^d
        a_{j,k} = softmax(w_k · f'_j + c_k)            (axis: keywords (default) or frames)
        f^kw_k = Σ_j a_{j,k} (f'_j − z_k)
        e'^nt = (1/|K_v|) Σ_k f^kw_k + (1/N_f) Σ_j f'_j;   e^nt = W^nt e'^nt + b^nt

    frames (B, T, D), keywords (B, K, G), keyword_mask (B, K) → e^nt (B, D). A video without keywords uses the
    frame mean only (reconstruction).
    """

    def __init__(self, kg_dim: int, dim: int, softmax_over: str, dropout: float) -> None:
        super().__init__()
        self.phi_w = _mlp(kg_dim, dim, dim, dropout)
        self.phi_c = _mlp(kg_dim, dim, 1, dropout)
        self.phi_z = _mlp(kg_dim, dim, dim, dropout)
        self.out = nn.Linear(dim, dim)  # W^nt, b^nt
        check_choice("softmax_over", softmax_over, ("keywords", "frames"))
        self.softmax_over = softmax_over

    def assignment(self, frames: torch.Tensor, keywords: torch.Tensor, keyword_mask: torch.Tensor) -> torch.Tensor:
        """a (B, T, K); masked keywords get 0."""
        w = self.phi_w(keywords)  # (B, K, D)
        c = self.phi_c(keywords).squeeze(-1)  # (B, K)
        logits = (torch.einsum("btd,bkd->btk", frames, w) + c[:, None, :]).float()  # (B, T, K)
        logits = logits.masked_fill(~keyword_mask[:, None, :], float("-inf"))
        dim = {"keywords": -1, "frames": 1}[self.softmax_over]  # (B, T, K): K for NetVLAD's axis, T otherwise
        return torch.nan_to_num(torch.softmax(logits, dim=dim), nan=0.0)  # (B, T, K)

    def forward(self, frames: torch.Tensor, keywords: torch.Tensor, keyword_mask: torch.Tensor) -> torch.Tensor:
        a = self.assignment(frames, keywords, keyword_mask).to(frames.dtype)  # (B, T, K)
        z = self.phi_z(keywords)  # (B, K, D)
        # Σ_j a_jk (f'_j − z_k) = Σ_j a_jk f'_j − (Σ_j a_jk) z_k
        f_kw = torch.einsum("btk,btd->bkd", a, frames) - a.sum(dim=1)[..., None] * z  # (B, K, D)
        m = keyword_mask.to(frames.dtype)  # (B, K)
        kw_mean = (f_kw * m[..., None]).sum(dim=1) / m.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, D), 0 if none
        return self.out(kw_mean + frames.mean(dim=1))  # (B, D)


class LabelMatchingHead(nn.Module):
    """Knowledge-enhanced label prediction for one level (spec §3.3c):

        ê_v = W7 GELU(W6 e^nt + b6) + b7,  ê_q = W9 GELU(W8 e^label_q + b8) + b9,  s'_{v,q} = ê_v · ê_q

    ``e^label_q`` = the label's KG vector (frozen by default) where it exists, else a learnable vector. Each
    label's score depends on its own vector only, so appending a label changes no existing score.
    """

    def __init__(self, dim: int, kg_dim: int, num_labels: int, dropout: float, freeze_kg: bool) -> None:
        super().__init__()
        self.video_mlp = _mlp(dim, dim, dim, dropout)
        self.label_mlp = _mlp(kg_dim, dim, dim, dropout)
        self.register_buffer("label_kg", torch.zeros(num_labels, kg_dim))  # KG vectors (set from the data)
        self.register_buffer("has_kg", torch.zeros(num_labels, dtype=torch.bool))
        self.learned = nn.Parameter(torch.randn(num_labels, kg_dim) * EMBEDDING_STD)  # labels without a KG entity
        self.freeze_kg = freeze_kg

    def set_label_vectors(self, vectors: torch.Tensor, has_kg: torch.Tensor) -> None:
        """vectors (L, G) KG embeddings of the labels (rows with has_kg False are ignored)."""
        if vectors.shape != self.label_kg.shape:
            raise ValueError(f"label KG vectors {tuple(vectors.shape)} != expected {tuple(self.label_kg.shape)}")
        self.label_kg.copy_(vectors)
        self.has_kg.copy_(has_kg)
        with torch.no_grad():
            self.learned[has_kg] = vectors[has_kg].to(self.learned.dtype)  # start from KG where not frozen

    def label_embeddings(self) -> torch.Tensor:
        """e^label (L, G)."""
        kg = self.label_kg if self.freeze_kg else self.learned
        return torch.where(self.has_kg[:, None], kg, self.learned)

    def score(self, video: torch.Tensor, label_vectors: torch.Tensor) -> torch.Tensor:
        """Basic scores of arbitrary label vectors: video (B, D), label_vectors (L, G) → (B, L)."""
        return self.video_mlp(video) @ self.label_mlp(label_vectors).T  # (B, L)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.score(video, self.label_embeddings())  # (B, L)


def remap_rows(values: torch.Tensor, terms: list[str], new_terms: list[str]) -> torch.Tensor:
    """Rows of ``values`` (one per term of ``terms``) moved to the order of ``new_terms``: a term in both keeps its
    row, a term only in ``new_terms`` gets zeros, a term only in ``terms`` is dropped. (V, ...) → (V', ...)."""
    index = {t: i for i, t in enumerate(terms)}
    dst = [j for j, t in enumerate(new_terms) if t in index]
    out = values.new_zeros(len(new_terms), *values.shape[1:])  # (V', ...)
    out[dst] = values[[index[new_terms[j]] for j in dst]]
    return out


def _encode_terms(terms: list[str]) -> torch.Tensor:
    """A term list as a uint8 tensor (UTF-8 JSON): state dicts and their checkers expect tensors."""
    data = bytearray(json.dumps(terms, ensure_ascii=False).encode("utf-8"))
    return torch.frombuffer(data, dtype=torch.uint8).clone()  # (bytes,)


def _decode_terms(data: torch.Tensor) -> list[str]:
    return json.loads(data.cpu().numpy().tobytes().decode("utf-8"))


class KeywordOffsets(nn.Module):
    """Learnable offsets of the keywords' KG vectors (``freeze_keyword_kg: false``): g_k = G_{kw_k} + δ_{kw_k}.

    ``delta`` (V, G) starts at 0 (so training starts from the KG vectors; weight decay pulls back towards them),
    one row per term of ``vocabulary``: the KG rows the data module loaded (``KEVSRDataModule.keyword_vocab``),
    set by :meth:`set_vocabulary`. The vocabulary is saved with the weights (the state dict's
    ``<prefix>_extra_state``, UTF-8 JSON as uint8), so offsets trained on one vocabulary and loaded where the data
    give another (other annotations, another KG file) are mapped by term: a term in both keeps its offset, a term
    new to the current vocabulary starts at 0, a term it lacks is dropped (no keyword can point at it). A module
    without a vocabulary yet (``load_from_checkpoint`` before any data) takes the checkpoint's.
    """

    def __init__(self, kg_dim: int) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(0, kg_dim))
        self.vocabulary: list[str] = []

    def set_vocabulary(self, terms: list[str]) -> None:
        """One offset per term of ``terms`` (call before the optimizer is built): zeros for a fresh module, the
        present offsets moved by term (:func:`remap_rows`) when it already holds some."""
        terms = list(terms)
        if terms == self.vocabulary and len(terms) == self.delta.shape[0]:
            return
        if not self.vocabulary and self.delta.shape[0] > 0:  # loaded from a checkpoint that saved no vocabulary
            self._check_unnamed_rows(self.delta.shape[0], terms)
        else:
            self._report_remap(self.vocabulary, terms)
            self.delta = nn.Parameter(remap_rows(self.delta.detach(), self.vocabulary, terms))
        self.vocabulary = terms

    @staticmethod
    def _check_unnamed_rows(rows: int, terms: list[str]) -> None:
        """Offsets from a checkpoint written before vocabularies were saved: usable by row only, if sizes agree."""
        if rows != len(terms):
            raise ValueError(
                f"the checkpoint's keyword offsets (model.config.freeze_keyword_kg=false) have {rows} rows but the "
                f"data's keyword vocabulary (data.kg_path rows needed by the annotations) has {len(terms)} terms, "
                "and the checkpoint saved no vocabulary to map them by term: use the training run's data.kg_path and "
                "annotations, or train again"
            )
        rank_zero_warn(
            "the checkpoint's keyword offsets (model.config.freeze_keyword_kg=false) come without their vocabulary "
            "(a checkpoint from an older kevsr): they are applied by row, which is right only if data.kg_path and "
            "the annotations give the training run's terms"
        )

    @staticmethod
    def _report_remap(old: list[str], new: list[str]) -> None:
        if not old:
            return  # a fresh module: nothing trained to move
        old_set, new_set = set(old), set(new)
        added = [t for t in new if t not in old_set]
        dropped = [t for t in old if t not in new_set]
        rank_zero_info(
            f"keyword offsets (freeze_keyword_kg: false) mapped by term from {len(old)} trained terms to the data's "
            f"{len(new)}: {len(old_set & new_set)} kept, {len(added)} new at 0 (e.g. {added[:5]}), {len(dropped)} "
            f"dropped (e.g. {dropped[:5]})"
        )

    def get_extra_state(self) -> torch.Tensor:
        return _encode_terms(self.vocabulary)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.vocabulary = _decode_terms(state)

    @staticmethod
    def saved_vocabulary(state_dict: dict, prefix: str) -> list[str] | None:
        """The vocabulary a state dict holds for the offsets at ``prefix`` (None: saved without one)."""
        data = state_dict.get(prefix + _EXTRA_STATE)
        return None if data is None else _decode_terms(data)

    def _load_from_state_dict(  # noqa: ANN001 (torch hook signature)
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # state_dict is load_state_dict's own copy: entries replaced here do not reach the caller's dict
        saved = state_dict.get(prefix + "delta")
        saved_terms = self.saved_vocabulary(state_dict, prefix)
        if saved is not None:
            if saved_terms is not None and len(saved_terms) != saved.shape[0]:
                raise ValueError(f"{prefix}delta has {saved.shape[0]} rows but its saved vocabulary {len(saved_terms)}")
            if not self.vocabulary:  # no data yet: the checkpoint's vocabulary and size
                if saved.shape != self.delta.shape:
                    self.delta = nn.Parameter(self.delta.new_zeros(saved.shape))
            elif saved_terms is None:
                self._check_unnamed_rows(saved.shape[0], self.vocabulary)
            elif saved_terms != self.vocabulary:  # the data's vocabulary (set in setup) differs: move by term
                self._report_remap(saved_terms, self.vocabulary)
                state_dict[prefix + "delta"] = remap_rows(saved, saved_terms, self.vocabulary)
                state_dict[prefix + _EXTRA_STATE] = _encode_terms(self.vocabulary)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if saved_terms is None and prefix + _EXTRA_STATE in missing_keys:
            missing_keys.remove(prefix + _EXTRA_STATE)  # an older checkpoint: handled above

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, K) long → (B, K, G)."""
        if self.delta.shape[0] == 0:
            raise RuntimeError(
                "model.config.freeze_keyword_kg=false but the keyword vocabulary is empty: the data module sets it "
                "(KEVSRModule.setup), or call model.nontemporal.keyword_delta.set_vocabulary(datamodule.keyword_vocab)"
            )
        # F.embedding, not self.delta[ids]: a keyword repeated in the batch gets its gradients summed, and the
        # backward of the indexing sums them in a thread-dependent order on CPU (runs would not repeat exactly)
        return F.embedding(ids, self.delta)


class NonTemporalStream(nn.Module):
    """S2 (spec §3.3): f^l frames → region attention → keyword fusion → label-embedding matching."""

    def __init__(self, cfg: KEVSRConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.cfg = cfg
        self.refine = FrameRefiner(
            cfg.f2d_dim + cfg.f3d_dim + cfg.text_dim, d, cfg.dropout, cfg.refine_hidden_dropout
        )  # τ = l
        # Only modules the forward pass uses are built: under DDP (find_unused_parameters=False) a parameter that
        # gets no gradient stops training. The Transformer replacement (w/o-know & w-temp) has no region reasoning
        # or local attention; shared random keywords exist only where the keyword fusion reads them.
        if cfg.nt_fusion != "transformer":
            self.regions = RegionReasoner(cfg)
            self.local_attention = LocalAttentionPool(d)
        self.fusion: nn.Module
        if cfg.nt_fusion == "knowledge":
            self.fusion = KeywordFusion(cfg.kg_dim, d, cfg.assign_softmax_over, cfg.dropout)
        elif cfg.nt_fusion == "mean":
            self.fusion = nn.Linear(d, d)  # e^nt = W^nt mean_j f'_j + b^nt
        else:
            self.region_in = nn.Linear(cfg.region_dim, d)
            self.fusion_cls = nn.Parameter(torch.zeros(1, 1, d))
            layer = nn.TransformerEncoderLayer(
                d, cfg.region_heads, 4 * d, cfg.temporal_dropout, "gelu", batch_first=True
            )
            self.fusion = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        if cfg.nt_fusion == "knowledge" and cfg.keyword_source == "random_shared":
            self.shared_keywords = nn.Parameter(torch.randn(cfg.num_keywords, cfg.kg_dim) * EMBEDDING_STD)
        self.tune_keywords = cfg.nt_fusion == "knowledge" and cfg.keyword_source == "kg" and not cfg.freeze_keyword_kg
        if self.tune_keywords:
            self.keyword_delta = KeywordOffsets(cfg.kg_dim)
        self.head1 = LabelMatchingHead(d, cfg.kg_dim, cfg.num_level1, cfg.dropout, cfg.freeze_label_kg)
        self.head2 = LabelMatchingHead(d, cfg.kg_dim, cfg.num_level2, cfg.dropout, cfg.freeze_label_kg)

    def video_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """e^nt (B, D)."""
        f_l = self.refine(batch["f2d"], batch["f3d"], batch["text"])  # (B, T, D)
        mask = batch["region_mask"]  # (B, T, R) bool
        if self.cfg.nt_fusion == "transformer":
            # Reconstruction of "w/o-know & w-temp": [CLS] + frames + all regions → Transformer → [CLS]
            b = f_l.shape[0]
            regions = self.region_in(batch["regions"]).flatten(1, 2)  # (B, T·R, D)
            tokens = torch.cat([self.fusion_cls.expand(b, -1, -1), f_l, regions], dim=1)  # (B, 1+T+T·R, D)
            valid = torch.cat([mask.new_ones(b, 1 + f_l.shape[1]), mask.flatten(1)], dim=1)  # (B, 1+T+T·R)
            return self.fusion(tokens, src_key_padding_mask=~valid)[:, 0]  # (B, D)
        regions = self.regions(batch["regions"], mask)  # (B, T, R, D)
        frames = self.local_attention(f_l, regions, mask)  # (B, T, D) f'^l
        if self.cfg.nt_fusion == "mean":
            return self.fusion(frames.mean(dim=1))  # (B, D)
        keywords, kw_mask = self.keyword_vectors(batch)
        return self.fusion(frames, keywords, kw_mask)  # (B, D)

    def keyword_vectors(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The keyword embeddings g_k fed to the fusion (B, K, G) and their mask (B, K): the KG vectors of the
        batch (plus the learned offsets when ``freeze_keyword_kg: false``) or the shared random ones (w/o-kw)."""
        if self.cfg.keyword_source == "random_shared":
            b = batch["f2d"].shape[0]
            keywords = self.shared_keywords[None].expand(b, -1, -1)  # (B, K, G)
            return keywords, torch.ones(b, keywords.shape[1], dtype=torch.bool, device=keywords.device)
        keywords, kw_mask = batch["keywords"], batch["keyword_mask"]  # (B, K, G), (B, K)
        if self.tune_keywords:
            if "keyword_ids" not in batch:
                raise KeyError("model.config.freeze_keyword_kg=false needs batch['keyword_ids'] (KEVSRDataset)")
            keywords = keywords + self.keyword_delta(batch["keyword_ids"])  # fine-tuned KG vectors
        return keywords, kw_mask

    def forward(self, batch: dict[str, torch.Tensor], parent_index: torch.Tensor) -> dict[str, torch.Tensor]:
        e_nt = self.video_embedding(batch)
        b1, b2 = self.head1(e_nt), self.head2(e_nt)  # (B, L1), (B, L2)
        return {"basic1": b1, "basic2": b2, "level1": b1, "level2": refine_level2(b1, b2, parent_index)}


class KEVSRModel(nn.Module):
    """Both streams. ``streams``: ``both`` (full model), ``temporal`` (MMBT-like S1 only), ``nontemporal``
    (the Ours-S2 rows). Inference uses S1 only (spec §3.5), so S2 can be absent from a checkpoint."""

    def __init__(self, cfg: KEVSRConfig, streams: Literal["both", "temporal", "nontemporal"] = "both") -> None:
        super().__init__()
        check_choice("model.streams", streams, STREAMS)
        self.cfg = cfg
        self.temporal = TemporalStream(cfg) if streams in ("both", "temporal") else None
        self.nontemporal = NonTemporalStream(cfg) if streams in ("both", "nontemporal") else None
        self.register_buffer("parent_index", torch.zeros(cfg.num_level2, dtype=torch.long))  # μ(q2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian init of the Linear layers (std ``init_std``, or 1/sqrt(fan_in) when null; zero biases) and of
        the [CLS]/position vectors (std ``init_std`` or 0.02); LayerNorm at 1/0. A BERT temporal encoder and its
        [CLS] vector keep their pre-trained values."""
        std = self.cfg.init_std
        bert = self.temporal is not None and self.temporal.uses_bert
        keep = set(self.temporal.encoder.modules()) if bert else set()  # pre-trained (or checkpoint) BERT weights
        for m in self.modules():
            if m in keep:
                continue
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std if std is not None else m.in_features**-0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.temporal is not None and not bert:  # with BERT: cls = its [CLS] word embedding
            nn.init.normal_(self.temporal.cls, std=std or EMBEDDING_STD)
            nn.init.normal_(self.temporal.pos, std=std or EMBEDDING_STD)
        if self.nontemporal is not None and self.cfg.nt_fusion == "transformer":  # the w/o-know & w-temp [CLS]
            nn.init.normal_(self.nontemporal.fusion_cls, std=std or EMBEDDING_STD)

    def set_hierarchy(self, parent_index: torch.Tensor) -> None:
        if parent_index.shape != self.parent_index.shape:
            raise ValueError(
                f"hierarchy has {len(parent_index)} level-2 labels, model expects {len(self.parent_index)}"
            )
        self.parent_index.copy_(parent_index)

    def forward_temporal(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.temporal(batch, self.parent_index)

    def forward_nontemporal(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.nontemporal(batch, self.parent_index)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """batch: f2d (B, T, D2), f3d (B, T, D3), text (B, Dt), regions (B, T, R, Dr), region_mask (B, T, R) bool,
        keywords (B, K, G), keyword_mask (B, K) → {"t": S1 scores, "nt": S2 scores} for the streams present."""
        out = {}
        if self.temporal is not None:
            out["t"] = self.forward_temporal(batch)
        if self.nontemporal is not None:
            out["nt"] = self.forward_nontemporal(batch)
        return out
