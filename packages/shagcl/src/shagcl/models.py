"""The SHA-GCL relation model (spec §3.2–3.6, §3.8): Stacked Hybrid-Attention object/edge context and the
Group Collaborative Learning decoder with frequency bias.

Reads top to bottom: config → box geometry → attention blocks → SHA encoder → SHA context → spatial (rect)
branch → frequency bias → GCL decoder → the full :class:`SHAGCL` model. The model returns tensors
(:class:`RelationOutput`), never a loss.

Objects of all images in a batch are concatenated (``num_objs`` per image); pairs likewise (``num_pairs``).
Attention runs inside each image only (pad per image, key-padding mask, padded outputs zeroed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_literal_fields, check_range
from mmzoo.data import read_torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from shagcl.gcl import classifier_sizes

__all__ = [
    "SHAGCLConfig",
    "RelationOutput",
    "encode_box_geometry",
    "MultiHeadAttention",
    "PositionwiseFeedForward",
    "AttentionLayer",
    "HybridAttentionLayer",
    "SHAEncoder",
    "SelfAttentionEncoder",
    "SHAContext",
    "RectFeatures",
    "BoxHead",
    "UnionFeatures",
    "FrequencyBias",
    "GCLDecoder",
    "SHAGCL",
    "frequency_bias_init",
    "later_nms_relabel",
    "load_glove",
    "box_iou",
]

log = logging.getLogger(__name__)

Encoder = Literal["hybrid", "self", "cross"]
"""Context encoders (``model.config.encoder``)."""


@dataclass
class SHAGCLConfig:
    """Architecture and GCL settings (defaults: the paper's main setting, spec §3.9)."""

    protocol: Literal["predcls", "sgcls", "sgdet"] = "predcls"
    """PredCls (GT boxes + labels), SGCls (GT boxes), SGDet (detections); spec §2."""
    num_obj_classes: int = 151
    """C_obj including background (VG150: 151, GQA200: 201)."""
    num_predicates: int = 51
    """C_rel including background (VG150: 51, GQA200: 101)."""
    feature_dim: int = 4096
    """P: dimension of ROI features r_i and union features u_so (§3.2; 1024 with torchvision's box head)."""
    hidden_dim: int = 512
    """H: context width (§3.3)."""
    num_heads: int = 8
    """Attention heads (§3.3)."""
    key_dim: int = 64
    """d_k = d_v per head (§3.3)."""
    ffn_dim: int = 2048
    """Inner width of the 1x1-conv feed-forward (§3.3)."""
    dropout: float = 0.1
    """Dropout in attention, FFN and box MLP (§3.3)."""
    obj_layers: int = 4
    """Hybrid layers of the object encoder (§3.4)."""
    edge_layers: int = 2
    """Hybrid layers of the edge encoder (§3.4)."""
    encoder: Encoder = "hybrid"
    """hybrid = SA + CA per stream (SHA); self = the official 'Self-Attention' encoder TransformerContext (one
    fused stream Linear([r; text; box]) then self-attention layers, §3.9); cross = CA cells only (ablation)."""
    word_dim: int = 200
    """D_w: word-embedding width (GloVe 6B-200d)."""
    word_embeddings: Literal["glove", "random"] = "glove"
    """Initialise the two class-embedding tables from GloVe (``glove_path``) or N(0, 1) (tests/demos)."""
    glove_path: str | None = None
    """Path to glove.6B.200d.txt (or a converted .pt); required when word_embeddings=glove."""
    trainable_box_head: bool = True
    """The relation head's own fc6/fc7 copies are trained on pooled ROI maps (spec §3.2.1, §3.9: 'relation-head
    copies of fc6/fc7 are trainable'; the official ``roi_heads.relation.box_feature_extractor``). The batch then
    carries ``obj_pooled`` (N, roi_channels, R, R), from an ``shagcl extract --object_stage pooled`` cache.
    False: the batch carries frozen post-fc7 features ``obj_feats`` (N, P) (``--object_stage fc7``, synthetic)."""
    union_features: Literal["official", "simplified"] = "official"
    """official (§3.2.2): ROIAlign of the union box on all ``fpn_levels`` levels, concatenated (``union_pooled``
    (M, L·C, R, R) in the batch), 3×3 conv + ReLU to C channels, plus the rect map, then the union branch's own
    trainable fc6/fc7. simplified: the batch carries the detector's frozen box-head feature of the union box
    ``union_feats`` (M, P) and the rect map is projected to P and added after it (compact cache)."""
    roi_channels: int = 256
    """C: FPN channels of the pooled ROI maps (256 for FPN)."""
    roi_resolution: int = 7
    """R: ROIAlign output side (7, spec §3.2.1)."""
    fpn_levels: int = 4
    """L: FPN levels pooled for the official union feature (P2–P5, spec §3.2.2)."""
    box_head_checkpoint: str | None = None
    """Detector state dict (torchvision fasterrcnn_resnet50_fpn, the one given to ``shagcl extract``) whose box
    head ``roi_heads.box_head.fc6/fc7`` initialises the relation head's fc6/fc7 copies (object and union),
    as the official code does; null: random init (tests/demos)."""
    use_rect_features: bool = True
    """Add the spatial 'rect' branch of the union feature (§3.2.2)."""
    rect_size: int = 27
    """Canvas side of the rasterised head/tail masks (27 = 4*7 - 1, §3.2.2)."""
    use_frequency_bias: bool = True
    """FB_k frequency bias in every classifier (USE_BIAS, §3.5)."""
    decoder: Literal["gcl", "single"] = "gcl"
    """gcl = grouped classifiers (GCL); single = one classifier with plain CE (the 'SHA' ablation)."""
    group_split: Literal["divide", "average"] = "divide"
    """Grouping rule (§3.6.2): 'divide μ' or equal-size 'average' groups."""
    group_mu: float = 4.0
    """μ of the divide rule (divide4 default, §3.6.2)."""
    group_min_count: int = 200
    """Count floor of the divide rule (the official 200; small for tiny datasets)."""
    num_average_groups: int = 5
    """Group count of the 'average' rule."""
    count_source: Literal["computed", "official"] = "computed"
    """Predicate counts for grouping/re-sampling: from the training annotations, or the official lists (§3.6.4)."""
    background_mode: Literal["rand_insert", "rand_choose", "all_include"] = "rand_insert"
    """ZERO_LABEL_PADDING_MODE (§3.6.5)."""
    resample: bool = True
    """Median re-sampling of foreground pairs per classifier (§3.6.4)."""
    kd_mode: Literal["KL_logit_TopDown", "KL_logit_Neighbor", "KL_logit_BiDirection", "KL_logit_BottomUp", "None"] = (
        "KL_logit_TopDown"
    )
    """Collaborative knowledge distillation mode (§3.6.6)."""
    kd_coefficient: float = 1.0
    """λ = KNOWLEDGE_LOSS_COEFFICIENT (§3.6.6)."""
    no_relation_restrain: bool = True
    """Down-weight KD on pairs whose label is background for the teacher (NO_RELATION_RESTRAIN)."""
    no_relation_penalty: float = 0.1
    """The down-weight (NO_RELATION_PENALTY, §3.6.6)."""
    later_nms_threshold: float = 0.5
    """SGDet object relabelling NMS IoU (TEST.RELATION.LATER_NMS_PREDICTION_THRES, §3.4)."""

    def __post_init__(self) -> None:
        # protocol, encoder, word_embeddings, union_features, decoder, group_split, count_source, background_mode
        # and kd_mode: each is read with if/else, so a misspelt one would build or train another variant
        check_literal_fields(self, "model.config")
        for key in ("num_obj_classes", "num_predicates"):  # both count the background class
            check_range(f"model.config.{key}", getattr(self, key), ge=2, integer=True)
        for key in (
            "feature_dim",
            "hidden_dim",
            "num_heads",
            "key_dim",
            "ffn_dim",
            "obj_layers",
            "edge_layers",
            "word_dim",
        ):
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        for key in ("roi_channels", "roi_resolution", "fpn_levels", "rect_size"):
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        check_range("model.config.group_mu", self.group_mu, gt=1)  # the divide rule's ratio between group heads
        check_range("model.config.group_min_count", self.group_min_count, ge=0, integer=True)
        check_range("model.config.num_average_groups", self.num_average_groups, ge=1, integer=True)
        check_range("model.config.kd_coefficient", self.kd_coefficient, ge=0)  # 0: no distillation
        check_range("model.config.no_relation_penalty", self.no_relation_penalty, ge=0)
        check_range("model.config.later_nms_threshold", self.later_nms_threshold, ge=0, le=1)  # an IoU
        if (
            self.union_features == "official"
            and self.use_rect_features
            and (((self.rect_size + 1) // 2) + 1) // 2 != self.roi_resolution
        ):
            raise ValueError(
                f"model.config.rect_size={self.rect_size} gives a "
                f"{(((self.rect_size + 1) // 2) + 1) // 2}-wide rect map, the union map is "
                f"roi_resolution={self.roi_resolution} wide: use rect_size = 4*roi_resolution - 1"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.config.dropout={self.dropout} must be in [0, 1)")
        if self.word_embeddings == "glove" and not self.glove_path:
            raise ValueError(
                "model.config.glove_path is required when model.config.word_embeddings=glove: supply "
                "glove.6B.200d.txt (https://nlp.stanford.edu/data/glove.6B.zip) or set word_embeddings: random"
            )


@dataclass
class RelationOutput:
    """What :class:`SHAGCL` returns for a batch.

    obj_logits (N, C_obj) or None (PredCls); obj_labels (N,) predicted (PredCls: GT) classes; obj_scores (N,);
    rel_logits: K tensors (M, n_k + 1), one per classifier (the last one is used at test).
    """

    obj_logits: torch.Tensor | None
    obj_labels: torch.Tensor
    obj_scores: torch.Tensor
    rel_logits: list[torch.Tensor]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes with the '+1' pixel convention of maskrcnn-benchmark. a (N, 4), b (M, 4) -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)  # (N,)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # (M,)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt + 1).clamp_min(0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode_box_geometry(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """9-d box geometry (§3.2.3): [w/W, h/H, cx/W, cy/H, x1/W, y1/H, x2/W, y2/H, w·h/(W·H)].

    boxes (N, 4) xyxy pixels; image_sizes (N, 2) = (W, H) of each box's image. w = x2 − x1 + 1, h = y2 − y1 + 1,
    (cx, cy) = (x1 + w/2, y1 + h/2). Returns (N, 9).
    """
    w_img, h_img = image_sizes[:, 0:1].to(boxes), image_sizes[:, 1:2].to(boxes)  # (N, 1)
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = (x2 - x1 + 1)[:, None], (y2 - y1 + 1)[:, None]  # (N, 1)
    cx, cy = x1[:, None] + 0.5 * w, y1[:, None] + 0.5 * h
    return torch.cat(
        [
            w / w_img,
            h / h_img,
            cx / w_img,
            cy / h_img,
            x1[:, None] / w_img,
            y1[:, None] / h_img,
            x2[:, None] / w_img,
            y2[:, None] / h_img,
            w * h / (w_img * h_img),
        ],
        dim=-1,
    )  # (N, 9)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention with post-LayerNorm residual on the query (§3.3):
    out = LayerNorm(Q + Dropout(W_o · Attn(Q W_q, K W_k, V W_v))),  Attn = softmax(q kᵀ / √d_k) v.

    Shapes: q (B, Nq, H), kv (B, Nk, H), key_pad (B, Nk) True at padding -> (B, Nq, H).
    """

    def __init__(self, hidden_dim: int, num_heads: int, key_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.w_q = nn.Linear(hidden_dim, num_heads * key_dim)
        self.w_k = nn.Linear(hidden_dim, num_heads * key_dim)
        self.w_v = nn.Linear(hidden_dim, num_heads * key_dim)
        self.fc = nn.Linear(num_heads * key_dim, hidden_dim)
        self.attn_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = math.sqrt(2.0 / (self.fc.out_features + self.key_dim))  # N(0, √(2/(H + d_k))), official init
        for lin in (self.w_q, self.w_k, self.w_v):
            nn.init.normal_(lin.weight, 0.0, std)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        b, nq, _ = q.shape
        nk = kv.shape[1]
        heads, dk = self.num_heads, self.key_dim
        qh = self.w_q(q).view(b, nq, heads, dk).transpose(1, 2)  # (B, h, Nq, dk)
        kh = self.w_k(kv).view(b, nk, heads, dk).transpose(1, 2)  # (B, h, Nk, dk)
        vh = self.w_v(kv).view(b, nk, heads, dk).transpose(1, 2)  # (B, h, Nk, dk)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(dk)  # (B, h, Nq, Nk)
        scores = scores.float().masked_fill(key_pad[:, None, None, :], float("-inf"))
        attn = self.attn_dropout(torch.nan_to_num(scores.softmax(-1)).to(vh))  # rows of all-padding -> 0
        out = (attn @ vh).transpose(1, 2).reshape(b, nq, heads * dk)  # (B, Nq, h*dk)
        return self.norm(q + self.dropout(self.fc(out)))


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = LayerNorm(x + Dropout(W_2 ReLU(W_1 x))) (§3.3). x (B, N, H) -> (B, N, H).

    The official 1×1 Conv1d layers are written as the equivalent per-position ``nn.Linear`` (same maths and
    parameter count; much faster on CPU)."""

    def __init__(self, hidden_dim: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(hidden_dim, ffn_dim)  # 1×1 conv H -> FFN
        self.w_2 = nn.Linear(ffn_dim, hidden_dim)  # 1×1 conv FFN -> H
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.w_2(F.relu(self.w_1(x)))  # (B, N, H)
        return self.norm(x + self.dropout(out))


class AttentionLayer(nn.Module):
    """Layer(Q, KV) = FFN(MHA(Q, KV, KV)), outputs zeroed at padded query slots (§3.3).

    SA(X) = Layer(X, X); CA(X, Y) = Layer(X, Y). Shapes: q (B, Nq, H), kv (B, Nk, H), pad masks (B, N)."""

    def __init__(self, hidden_dim: int, num_heads: int, key_dim: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(hidden_dim, num_heads, key_dim, dropout)
        self.ffn = PositionwiseFeedForward(hidden_dim, ffn_dim, dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        out = self.attention(q, kv, pad).masked_fill(pad[..., None], 0.0)
        return self.ffn(out).masked_fill(pad[..., None], 0.0)


class HybridAttentionLayer(nn.Module):
    """One hybrid layer (§3.3): V' = SA_v(V) + CA_v(V, T),  T' = SA_t(T) + CA_t(T, V) (four cells).

    ``mode='self'`` keeps only the SA cells (two independent SA streams; the 'self' ablation config uses
    :class:`SelfAttentionEncoder` instead), ``mode='cross'`` only the CA cells (ablation encoder).
    Shapes: v, t (B, N, H), pad (B, N) -> two (B, N, H)."""

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        key_dim: int,
        ffn_dim: int,
        dropout: float,
        mode: Encoder = "hybrid",
    ) -> None:
        super().__init__()
        check_choice("model.config.encoder", mode, get_args(Encoder))  # anything else would build the hybrid cells
        self.mode = mode
        args = (hidden_dim, num_heads, key_dim, ffn_dim, dropout)
        self.sa_v = AttentionLayer(*args) if mode != "cross" else None
        self.sa_t = AttentionLayer(*args) if mode != "cross" else None
        self.ca_v = AttentionLayer(*args) if mode != "self" else None
        self.ca_t = AttentionLayer(*args) if mode != "self" else None

    def forward(self, v: torch.Tensor, t: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new_v = v.new_zeros(v.shape)
        new_t = t.new_zeros(t.shape)
        if self.sa_v is not None:
            new_v = new_v + self.sa_v(v, v, pad)  # SA_v(V): intra-modal
            new_t = new_t + self.sa_t(t, t, pad)  # SA_t(T)
        if self.ca_v is not None:
            new_v = new_v + self.ca_v(v, t, pad)  # CA_v(V, T): queries V, keys/values T
            new_t = new_t + self.ca_t(t, v, pad)  # CA_t(T, V)
        return new_v, new_t


class SHAEncoder(nn.Module):
    """Stacked Hybrid-Attention encoder (§3.3): L hybrid layers; returns V_L + T_L.

    Shapes: v, t (B, N, H) padded per image, pad (B, N) True at padding -> (B, N, H)."""

    def __init__(
        self,
        num_layers: int,
        hidden_dim: int,
        num_heads: int,
        key_dim: int,
        ffn_dim: int,
        dropout: float,
        mode: Encoder = "hybrid",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            HybridAttentionLayer(hidden_dim, num_heads, key_dim, ffn_dim, dropout, mode) for _ in range(num_layers)
        )

    def forward(self, v: torch.Tensor, t: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            v, t = layer(v, t, pad)
        return v + t


class SelfAttentionEncoder(nn.Module):
    """Plain transformer encoder of TransformerContext (the 'Self-Attention' ablation, §3.9): L SA layers on one
    stream. Shapes: x (B, N, H) padded per image, pad (B, N) -> (B, N, H)."""

    def __init__(
        self, num_layers: int, hidden_dim: int, num_heads: int, key_dim: int, ffn_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            AttentionLayer(hidden_dim, num_heads, key_dim, ffn_dim, dropout) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, x, pad)
        return x


def _pad(x: torch.Tensor, num_objs: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated (N, H) -> padded (B, N_max, H) and key-padding mask (B, N_max) True at padding."""
    parts = list(x.split(list(num_objs)))
    padded = pad_sequence(parts, batch_first=True)  # (B, N_max, H)
    lengths = torch.as_tensor(list(num_objs), device=x.device)
    pad = torch.arange(padded.shape[1], device=x.device)[None, :] >= lengths[:, None]  # (B, N_max)
    return padded, pad


def _unpad(x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Padded (B, N_max, H) -> concatenated (N, H) (image order kept)."""
    return x[~pad]


def later_nms_relabel(obj_probs: torch.Tensor, boxes: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """SGDet object relabelling by per-class greedy NMS (§3.4 step 5), for one image.

    Repeatedly take the highest (box, class) score among non-background classes, assign that class to that box,
    zero that class for boxes overlapping it above ``threshold``, and retire the box. obj_probs (N, C_obj)
    softmax scores, boxes (N, 4) -> labels (N,) in 1..C_obj−1.
    Deviation: torchvision detections carry one box per detection, not per-class regressed boxes, so the
    overlap is measured between the detection boxes.
    """
    scores = obj_probs.detach().clone().float()
    scores[:, 0] = -1.0  # background is never assigned
    n = scores.shape[0]
    labels = torch.zeros(n, dtype=torch.long, device=scores.device)
    overlap = box_iou(boxes, boxes) >= threshold  # (N, N)
    alive = torch.ones(n, dtype=torch.bool, device=scores.device)
    for _ in range(n):
        flat = int(scores.argmax())
        box, cls = divmod(flat, scores.shape[1])
        labels[box] = cls
        scores[overlap[box] & alive, cls] = 0.0  # suppress this class on the overlapping boxes still in play
        scores[box] = -2.0  # retire the box: a retired box is never picked or relabelled again
        alive[box] = False
    return labels


def load_glove(path: str | Path, names: Sequence[str], dim: int) -> torch.Tensor:
    """Word vectors for class names from ``glove.6B.<dim>d.txt`` or a ``.pt`` holding {"words", "vectors"}.

    A multi-word name not in the vocabulary uses its longest word; a name still missing gets N(0, 1) (§3.4).
    Returns (len(names), dim).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.config.glove_path={str(path)!r} does not exist: supply glove.6B.200d.txt (from "
            "https://nlp.stanford.edu/data/glove.6B.zip) or a converted .pt; see README, Data preparation"
        )
    wanted = set()
    for name in names:
        wanted.add(name)
        wanted.update(name.split(" "))
    vectors: dict[str, torch.Tensor] = {}
    if path.suffix == ".pt":
        blob = read_torch(path, "model.config.glove_path")
        if not isinstance(blob, dict) or not {"words", "vectors"} <= set(blob):
            raise KeyError(f"model.config.glove_path={str(path)!r}: a .pt GloVe file holds a dict with 'words' (a "
                           "list of str) and 'vectors' (a (words, dim) tensor)")  # fmt: skip
        if len(blob["words"]) != len(blob["vectors"]):
            raise ValueError(f"model.config.glove_path={str(path)!r}: {len(blob['words'])} words but "
                             f"{len(blob['vectors'])} vectors")  # fmt: skip
        for word, vec in zip(blob["words"], blob["vectors"], strict=True):
            if word in wanted:
                vectors[word] = vec.float()
    else:
        with open(path, encoding="utf8") as fh:
            for lineno, line in enumerate(fh, 1):
                word, _, rest = line.rstrip().partition(" ")
                if word in wanted:
                    try:
                        vectors[word] = torch.tensor([float(x) for x in rest.split(" ")])
                    except ValueError as err:
                        raise ValueError(f"{str(path)!r} line {lineno}: the vector of {word!r} is not a list of "
                                         f"numbers separated by single spaces ({err})") from err  # fmt: skip
    out = torch.randn(len(names), dim)
    for i, name in enumerate(names):
        key = name if name in vectors else max(name.split(" "), key=len)
        if key in vectors:
            if vectors[key].numel() != dim:
                raise ValueError(f"{path}: vectors have {vectors[key].numel()} dims, model.config.word_dim={dim}")
            out[i] = vectors[key]
    return out


class SHAContext(nn.Module):
    """Object and edge context with SHA encoders (§3.4).

    Steps: textual input (PredCls: Emb1[label]; else softmax(detector logits) @ Emb1), box MLP, V0/T0 projections,
    object encoder O, object prediction, edge inputs [r; O] and Emb2[predicted label], edge encoder E.

    ``encoder='self'`` is the official TransformerContext instead: one stream Linear([r; text; box]) → SA encoder
    → O, then Linear([r; O; Emb2[predicted label]]) → SA encoder → E.
    """

    def __init__(self, cfg: SHAGCLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_dim
        self.obj_embed1 = nn.Embedding(cfg.num_obj_classes, cfg.word_dim)  # Emb1
        self.obj_embed2 = nn.Embedding(cfg.num_obj_classes, cfg.word_dim)  # Emb2
        nn.init.normal_(self.obj_embed1.weight)
        nn.init.normal_(self.obj_embed2.weight)
        self.box_mlp = nn.Sequential(
            nn.Linear(9, 32), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(32, 128), nn.ReLU(), nn.Dropout(cfg.dropout)
        )
        enc = (h, cfg.num_heads, cfg.key_dim, cfg.ffn_dim, cfg.dropout)
        if cfg.encoder == "self":  # TransformerContext: one fused stream
            self.lin_obj = nn.Linear(cfg.feature_dim + cfg.word_dim + 128, h)
            self.lin_edge = nn.Linear(cfg.feature_dim + h + cfg.word_dim, h)
            self.obj_encoder = SelfAttentionEncoder(cfg.obj_layers, *enc)
            self.edge_encoder = SelfAttentionEncoder(cfg.edge_layers, *enc)
        else:
            self.lin_obj_visual = nn.Linear(cfg.feature_dim + 128, h)  # V0
            self.lin_obj_textual = nn.Linear(cfg.word_dim, h)  # T0
            self.lin_edge_visual = nn.Linear(cfg.feature_dim + h, h)  # Ve0
            self.lin_edge_textual = nn.Linear(cfg.word_dim, h)  # Te0
            self.obj_encoder = SHAEncoder(cfg.obj_layers, *enc, cfg.encoder)
            self.edge_encoder = SHAEncoder(cfg.edge_layers, *enc, cfg.encoder)
        self.obj_classifier = nn.Linear(h, cfg.num_obj_classes) if cfg.protocol != "predcls" else None

    def set_word_vectors(self, vectors: torch.Tensor) -> None:
        """Copy (C_obj, D_w) vectors (e.g. from :func:`load_glove`) into both embedding tables."""
        with torch.no_grad():
            self.obj_embed1.weight.copy_(vectors)
            self.obj_embed2.weight.copy_(vectors)

    def forward(
        self,
        obj_feats: torch.Tensor,
        boxes: torch.Tensor,
        obj_image_sizes: torch.Tensor,
        num_objs: Sequence[int],
        labels: torch.Tensor | None,
        det_logits: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """obj_feats (N, P), boxes (N, 4), obj_image_sizes (N, 2), labels (N,) GT (PredCls and training),
        det_logits (N, C_obj) (SGCls/SGDet). Returns edge context (N, H), obj_logits (N, C_obj) | None,
        predicted labels (N,), object scores (N,)."""
        cfg = self.cfg
        if cfg.protocol == "predcls":
            text = self.obj_embed1(labels)  # (N, D_w) Emb1[label]
        else:
            text = det_logits.detach().float().softmax(-1) @ self.obj_embed1.weight  # (N, D_w)
        box_emb = self.box_mlp(encode_box_geometry(boxes, obj_image_sizes))  # (N, 128)
        if cfg.encoder == "self":
            x0p, pad = _pad(self.lin_obj(torch.cat([obj_feats, text, box_emb], -1)), num_objs)  # (B, N_max, H)
            obj_ctx = _unpad(self.obj_encoder(x0p, pad), pad)  # (N, H)
        else:
            v0 = self.lin_obj_visual(torch.cat([obj_feats, box_emb], -1))  # (N, H)
            t0 = self.lin_obj_textual(text)  # (N, H)
            v0p, pad = _pad(v0, num_objs)  # (B, N_max, H)
            t0p, _ = _pad(t0, num_objs)
            obj_ctx = _unpad(self.obj_encoder(v0p, t0p, pad), pad)  # (N, H) object context O

        if cfg.protocol == "predcls":
            obj_logits = None
            obj_labels = labels
            obj_scores = torch.ones(labels.shape, device=labels.device)
        else:
            obj_logits = self.obj_classifier(obj_ctx)  # (N, C_obj)
            probs = obj_logits.detach().float().softmax(-1)
            if cfg.protocol == "sgdet" and not self.training:
                obj_labels = torch.cat(
                    [
                        later_nms_relabel(p, b, cfg.later_nms_threshold)
                        for p, b in zip(probs.split(list(num_objs)), boxes.split(list(num_objs)))
                    ]
                )
            else:
                obj_labels = probs[:, 1:].argmax(-1) + 1  # argmax over foreground classes
            obj_scores = probs.gather(1, obj_labels[:, None]).squeeze(1)

        if cfg.encoder == "self":
            e0 = self.lin_edge(torch.cat([obj_feats, obj_ctx, self.obj_embed2(obj_labels)], -1))  # (N, H)
            e0p, pad = _pad(e0, num_objs)
            return _unpad(self.edge_encoder(e0p, pad), pad), obj_logits, obj_labels, obj_scores
        ve0 = self.lin_edge_visual(torch.cat([obj_feats, obj_ctx], -1))  # (N, H)
        te0 = self.lin_edge_textual(self.obj_embed2(obj_labels))  # (N, H)
        ve0p, pad = _pad(ve0, num_objs)
        te0p, _ = _pad(te0, num_objs)
        edge_ctx = _unpad(self.edge_encoder(ve0p, te0p, pad), pad)  # (N, H) edge context E
        return edge_ctx, obj_logits, obj_labels, obj_scores


class RectFeatures(nn.Module):
    """Spatial 'rect' branch of the union feature (§3.2.2): the head and tail boxes rescaled to an S×S canvas of
    their image (S = 27) and rasterised as two binary masks -> Conv(2→C/2, 7, s2, p3) → ReLU → BN → MaxPool(3, s2,
    p1) → Conv(C/2→C, 3, p1) → ReLU → BN (momentum 0.01) -> (M, C, 7, 7), added to the pooled union map
    (``union_features: official``). With ``feature_dim`` set (``union_features: simplified``) the map is
    flattened and projected to P, to be added to a cached post-fc7 union feature instead.

    Shapes: head_boxes, tail_boxes (M, 4) xyxy pixels, image_sizes (M, 2) = (W, H) -> (M, C, 7, 7) or (M, P)."""

    def __init__(self, channels: int = 256, rect_size: int = 27, feature_dim: int | None = None) -> None:
        super().__init__()
        self.rect_size = rect_size
        self.conv = nn.Sequential(
            nn.Conv2d(2, channels // 2, 7, stride=2, padding=3),
            nn.ReLU(),
            nn.BatchNorm2d(channels // 2, momentum=0.01),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(channels // 2, channels, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(channels, momentum=0.01),
        )
        side = (((rect_size + 1) // 2) + 1) // 2  # 27 -> 14 -> 7
        self.proj = nn.Linear(channels * side * side, feature_dim) if feature_dim is not None else None

    def rasterise(self, boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Binary masks (M, S, S): the box scaled by (S/W, S/H); canvas cell (y, x) (integers 0..S−1) is inside when
        floor(x1) <= x <= ceil(x2) and floor(y1) <= y <= ceil(y2) (the official rasterisation)."""
        s = self.rect_size
        scale = torch.stack([image_sizes[:, 0], image_sizes[:, 1]] * 2, -1).to(boxes)  # (M, 4) W H W H
        b = boxes / scale * s  # (M, 4) canvas coordinates
        grid = torch.arange(s, device=boxes.device, dtype=boxes.dtype)  # integer cells 0..S-1
        in_x = (grid[None, :] >= b[:, 0:1].floor()) & (grid[None, :] <= b[:, 2:3].ceil())  # (M, S)
        in_y = (grid[None, :] >= b[:, 1:2].floor()) & (grid[None, :] <= b[:, 3:4].ceil())  # (M, S)
        return (in_y[:, :, None] & in_x[:, None, :]).to(boxes.dtype)  # (M, S, S)

    def forward(self, head_boxes: torch.Tensor, tail_boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        rects = torch.stack([self.rasterise(head_boxes, image_sizes), self.rasterise(tail_boxes, image_sizes)], 1)
        maps = self.conv(rects)  # (M, C, 7, 7)
        return maps if self.proj is None else self.proj(maps.flatten(1))


class BoxHead(nn.Module):
    """The box head MLP on pooled ROI maps (§3.2.1): flatten → fc6 → ReLU → fc7 → ReLU, (N, C, R, R) -> (N, P).

    Parameter names equal torchvision's ``TwoMLPHead`` (``fc6``, ``fc7``), so a detector's
    ``roi_heads.box_head`` loads into it (:meth:`SHAGCL.load_box_head`); init otherwise Kaiming-uniform (a=1),
    bias 0 (maskrcnn-benchmark ``make_fc``)."""

    def __init__(self, channels: int, resolution: int, feature_dim: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(channels * resolution * resolution, feature_dim)
        self.fc7 = nn.Linear(feature_dim, feature_dim)
        for lin in (self.fc6, self.fc7):
            nn.init.kaiming_uniform_(lin.weight, a=1)
            nn.init.zeros_(lin.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(pooled.flatten(1)))))


class UnionFeatures(nn.Module):
    """The official union feature u_so (§3.2.2, ``union_features: official``):

        x = ReLU(Conv3×3(L·C → C)(cat_l ROIAlign_l(union box)))  (+ rect map of the head/tail masks)
        u_so = fc7(fc6(x))   (the union branch's own trainable box-head copy)

    Shapes: union_pooled (M, L·C, R, R) (all-level ROIAlign of the union boxes, from the feature cache),
    head_boxes, tail_boxes (M, 4), image_sizes (M, 2) -> (M, P)."""

    def __init__(self, cfg: SHAGCLConfig) -> None:
        super().__init__()
        c = cfg.roi_channels
        self.reduce = nn.Conv2d(cfg.fpn_levels * c, c, 3, padding=1)  # maskrcnn-benchmark make_conv3x3 + ReLU
        # make_conv3x3's init: He-normal over the fan-out (C·3·3) for a ReLU, bias 0
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.reduce.bias)
        self.rect = RectFeatures(c, cfg.rect_size) if cfg.use_rect_features else None
        self.box_head = BoxHead(c, cfg.roi_resolution, cfg.feature_dim)

    def forward(
        self, union_pooled: torch.Tensor, head_boxes: torch.Tensor, tail_boxes: torch.Tensor, image_sizes: torch.Tensor
    ) -> torch.Tensor:
        x = F.relu(self.reduce(union_pooled))  # (M, C, R, R)
        if self.rect is not None:
            x = x + self.rect(head_boxes, tail_boxes, image_sizes).to(x)
        return self.box_head(x)  # (M, P)


def frequency_bias_init(fg_matrix: torch.Tensor, num_fg: int, eps: float = 1e-3) -> torch.Tensor:
    """Frequency-bias init for a classifier covering predicates 1..num_fg (§3.5):
    FB[s, o, :] = log(F[s, o, S] / Σ_{c∈S} F[s, o, c] + 1e-3),  S = {0, 1..num_fg}.

    fg_matrix (C_obj, C_obj, C_rel) counts. Returns (C_obj * C_obj, num_fg + 1), row s·C_obj + o."""
    counts = fg_matrix[:, :, : num_fg + 1].double()  # (C, C, n+1)
    total = counts.sum(-1, keepdim=True).clamp_min(1e-12)
    return (counts / total + eps).log().reshape(-1, num_fg + 1).float()  # (C*C, n+1)


class FrequencyBias(nn.Module):
    """Trainable frequency bias FB_k indexed by ℓ_s·C_obj + ℓ_o (§3.5). Shapes: labels (M,), (M,) -> (M, n_k+1)."""

    def __init__(self, num_obj_classes: int, num_outputs: int) -> None:
        super().__init__()
        self.num_obj_classes = num_obj_classes
        self.table = nn.Embedding(num_obj_classes * num_obj_classes, num_outputs)
        nn.init.zeros_(self.table.weight)

    def reset_from_counts(self, fg_matrix: torch.Tensor) -> None:
        with torch.no_grad():
            self.table.weight.copy_(frequency_bias_init(fg_matrix, self.table.embedding_dim - 1))

    def forward(self, sub_labels: torch.Tensor, obj_labels: torch.Tensor) -> torch.Tensor:
        return self.table(sub_labels * self.num_obj_classes + obj_labels)


class GCLDecoder(nn.Module):
    """Pair representation, union-feature gating and K group classifiers with growing label spaces (§3.5–3.6).

        [h_i; t_i] = W_post E_i,  p_so = [h_s; t_o],  v_so = (W_g p_so) ⊙ u_so
        logits_k(s, o) = A_k v_so + B_k p_so + FB_k[(ℓ_s, ℓ_o)],   classifier k covers {0} ∪ 1..n_k

    With one group this is the single-classifier ('SHA') baseline.
    """

    def __init__(self, cfg: SHAGCLConfig, group_sizes: Sequence[int]) -> None:
        super().__init__()
        h, p = cfg.hidden_dim, cfg.feature_dim
        self.group_sizes = [int(g) for g in group_sizes]
        self.sizes = classifier_sizes(self.group_sizes)
        if self.sizes[-1] != cfg.num_predicates - 1:
            raise ValueError(
                f"group sizes {self.group_sizes} cover {self.sizes[-1]} predicates, "
                f"model.config.num_predicates - 1 = {cfg.num_predicates - 1}"
            )
        self.post_emb = nn.Linear(h, 2 * h)
        nn.init.normal_(self.post_emb.weight, 0.0, 10.0 * (1.0 / h) ** 0.5)  # official init N(0, 10/√H)
        nn.init.zeros_(self.post_emb.bias)
        self.post_cat = nn.Linear(2 * h, p)  # W_g: pair representation -> union gate
        self.rel_visual = nn.ModuleList(nn.Linear(p, n + 1) for n in self.sizes)  # A_k
        self.ctx_compress = nn.ModuleList(nn.Linear(2 * h, n + 1) for n in self.sizes)  # B_k
        for lin in [self.post_cat, *self.rel_visual, *self.ctx_compress]:
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.freq_bias = (
            nn.ModuleList(FrequencyBias(cfg.num_obj_classes, n + 1) for n in self.sizes)
            if cfg.use_frequency_bias
            else None
        )

    def reset_frequency_bias(self, fg_matrix: torch.Tensor) -> None:
        if self.freq_bias is not None:
            for fb in self.freq_bias:
                fb.reset_from_counts(fg_matrix)

    def forward(
        self,
        edge_ctx: torch.Tensor,
        pair_idx: torch.Tensor,
        union: torch.Tensor,
        obj_labels: torch.Tensor,
        last_only: bool = False,
    ) -> list[torch.Tensor]:
        """edge_ctx (N, H); pair_idx (M, 2) global object rows (s, o); union (M, P); obj_labels (N,).
        Returns K logits (M, n_k + 1) (only the last classifier's when ``last_only``)."""
        head, tail = self.post_emb(edge_ctx).chunk(2, dim=-1)  # (N, H) each
        # index_select: an object in several pairs gets its gradients summed in a fixed order (indexing with
        # head[rows] would sum them in a thread-dependent order on CPU, so runs would not repeat exactly)
        pair_rep = torch.cat([head.index_select(0, pair_idx[:, 0]), tail.index_select(0, pair_idx[:, 1])], -1)  # p_so
        visual = self.post_cat(pair_rep) * union  # (M, P) v_so = g_so ⊙ u_so
        sub_l, obj_l = obj_labels[pair_idx[:, 0]], obj_labels[pair_idx[:, 1]]
        ks = [len(self.sizes) - 1] if last_only else range(len(self.sizes))
        out = []
        for k in ks:
            logits = self.rel_visual[k](visual) + self.ctx_compress[k](pair_rep)  # (M, n_k+1)
            if self.freq_bias is not None:
                logits = logits + self.freq_bias[k](sub_l, obj_l)
            out.append(logits)
        return out


class SHAGCL(nn.Module):
    """The relation head: SHA context + GCL decoder (consumes cached/synthetic/detector features, §3.2.4).

    The decoder's shape depends on the predicate grouping, which depends on training counts, so it is built
    by :meth:`build_decoder` once the statistics are known (the LightningModule does this in ``setup``).

    Batch keys used (concatenated over images): obj_pooled (N, C, R, R) (``trainable_box_head``) or obj_feats
    (N, P), boxes (N, 4), obj_image_sizes (N, 2), num_objs list[int], labels (N,) (GT labels: PredCls input;
    training targets), det_logits (N, C_obj) (SGCls/SGDet), pair_idx (M, 2) global object rows, union_pooled
    (M, L·C, R, R) (``union_features: official``) or union_feats (M, P), pair_image_sizes (M, 2).
    """

    def __init__(self, cfg: SHAGCLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = SHAContext(cfg)
        simplified = cfg.union_features == "simplified"
        self.rect = (
            RectFeatures(cfg.roi_channels, cfg.rect_size, cfg.feature_dim)
            if (simplified and cfg.use_rect_features)
            else None
        )
        self.decoder: GCLDecoder | None = None
        self.box_head = (
            BoxHead(cfg.roi_channels, cfg.roi_resolution, cfg.feature_dim) if cfg.trainable_box_head else None
        )  # the relation head's fc6/fc7 copy for object ROI features (§3.2.1)
        self.union = UnionFeatures(cfg) if not simplified else None

    def load_box_head(self, path: str | Path) -> int:
        """Initialise every fc6/fc7 copy (object and union branch) from the detector state dict at ``path``
        (``roi_heads.box_head.fc6/fc7``; a dict holding ``model``/``state_dict`` also works), as the official code
        maps ``roi_heads.box.feature_extractor`` onto the relation head. Returns how many heads were loaded."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.config.box_head_checkpoint={str(path)!r} does not exist: supply the detector state dict "
                "given to `shagcl extract --checkpoint` (its box head initialises fc6/fc7), or null for random "
                "init; see README, Data preparation"
            )
        state = read_torch(path, "model.config.box_head_checkpoint")
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        prefix = "roi_heads.box_head."
        head = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if set(head) != {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}:
            raise KeyError(f"{path}: no torchvision box head ({prefix}fc6/fc7) in the state dict")
        heads = [h for h in (self.box_head, self.union.box_head if self.union is not None else None) if h is not None]
        for h in heads:
            if h.fc6.weight.shape != head["fc6.weight"].shape or h.fc7.weight.shape != head["fc7.weight"].shape:
                raise ValueError(
                    f"{path}: box head fc6 {tuple(head['fc6.weight'].shape)}, fc7 {tuple(head['fc7.weight'].shape)} "
                    f"vs model.config roi_channels·roi_resolution² -> feature_dim = {tuple(h.fc6.weight.shape)}"
                )
            h.load_state_dict(head)
        return len(heads)

    def object_features(self, batch: dict) -> torch.Tensor:
        """r_i (N, P): the trainable fc6/fc7 on pooled ROI maps, or the batch's cached post-fc7 features."""
        key = "obj_pooled" if self.box_head is not None else "obj_feats"
        if batch.get(key) is None:
            raise ValueError(
                f"model.config.trainable_box_head={self.box_head is not None} needs '{key}' in the batch: "
                + (
                    "extract the cache with `shagcl extract --object_stage pooled` (or set data.synthetic.pooled: true), "
                    "or set trainable_box_head: false"
                    if key == "obj_pooled"
                    else "extract with `--object_stage fc7`, or set trainable_box_head: true"
                )
            )
        return self.box_head(batch[key].float()) if self.box_head is not None else batch[key]

    def union_features(self, batch: dict) -> torch.Tensor:
        """u_so (M, P) of every pair in the batch (official or simplified path, see the config)."""
        key = "union_pooled" if self.union is not None else "union_feats"
        if batch.get(key) is None:
            raise ValueError(
                f"model.config.union_features={self.cfg.union_features} needs '{key}' in the batch: extract the "
                f"cache with `shagcl extract --union_stage {'pooled' if key == 'union_pooled' else 'fc7'}`"
                + (" (or set data.synthetic.pooled: true)" if key == "union_pooled" else "")
            )
        boxes, pair_idx = batch["boxes"], batch["pair_idx"]
        if self.union is not None:
            return self.union(
                batch[key].float(), boxes[pair_idx[:, 0]], boxes[pair_idx[:, 1]], batch["pair_image_sizes"]
            )
        union = batch[key]
        if self.rect is not None:
            union = union + self.rect(boxes[pair_idx[:, 0]], boxes[pair_idx[:, 1]], batch["pair_image_sizes"])
        return union

    def build_decoder(self, group_sizes: Sequence[int], fg_matrix: torch.Tensor | None = None) -> None:
        """Create the K classifiers for ``group_sizes`` and initialise their frequency bias from ``fg_matrix``."""
        self.decoder = GCLDecoder(self.cfg, group_sizes)
        if fg_matrix is not None:
            self.decoder.reset_frequency_bias(fg_matrix)

    def forward(self, batch: dict, last_only: bool = False) -> RelationOutput:
        if self.decoder is None:
            raise RuntimeError("SHAGCL.build_decoder(group_sizes, fg_matrix) must be called before forward")
        if self.cfg.protocol != "predcls" and batch.get("det_logits") is None:
            raise ValueError(
                f"model.config.protocol={self.cfg.protocol} needs detector logits in the batch ('det_logits')"
            )
        edge_ctx, obj_logits, obj_labels, obj_scores = self.context(
            self.object_features(batch),
            batch["boxes"],
            batch["obj_image_sizes"],
            batch["num_objs"],
            batch.get("labels"),
            batch.get("det_logits"),
        )
        union = self.union_features(batch)  # (M, P)
        rel_logits = self.decoder(edge_ctx, batch["pair_idx"], union, obj_labels, last_only)
        return RelationOutput(obj_logits, obj_labels, obj_scores, rel_logits)
