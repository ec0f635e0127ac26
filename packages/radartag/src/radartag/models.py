"""RADAR (spec §3): input embedding, the Gated Graph Transformer (GGT, intra-relation message passing), the
cross-relation combination with the Adversarial Aggregation Network (AAN), and the full model.

Reads top to bottom: config, gradient-reversal layer, input embedding (§3.2), GGT attention as a PyG
``MessagePassing`` layer (§3.3 stage 1), gated / sum updaters, reducers incl. the AAN (§3.4), one RADAR layer,
the model. Edge types are PyG triples ``(src, relation, dst)``; node types ``video`` and ``tag``.

Shape letters: N nodes, E edges, H heads, d_k = h / H, B batch videos, K tags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from mmzoo.config import check_literal_fields, check_range
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

__all__ = [
    "RadarConfig",
    "EdgeType",
    "SUBTOPIC",
    "SUPERTOPIC",
    "HAS_TAG",
    "FOLLOWED_BY",
    "GradientReversal",
    "grad_reverse",
    "InputEmbedding",
    "GGTConv",
    "mutual_attention",
    "GatedUpdater",
    "SumUpdater",
    "AdversarialAggregation",
    "CommonUniqueAggregation",
    "CommonReducer",
    "MeanReducer",
    "LMFReducer",
    "SelfAttentionReducer",
    "RadarLayer",
    "RadarOutput",
    "Radar",
]

EdgeType = tuple[str, str, str]
SUBTOPIC: EdgeType = ("tag", "subtopic_of", "tag")  # r1: child tag -> parent tag
SUPERTOPIC: EdgeType = ("tag", "supertopic_of", "tag")  # r1': parent -> child (bidirectional ablation)
HAS_TAG: EdgeType = ("video", "has_tag", "tag")  # r2: labelled video -> its tags
FOLLOWED_BY: EdgeType = ("video", "followed_by", "video")  # r3: followee's video -> follower's video


@dataclass
class RadarConfig:
    """Architecture of RADAR (defaults: the official ``ourgnn_l2_kwai_<vertical>`` configs, spec §3.7)."""

    video_dim: int = 768
    """Width of the video content feature."""
    tag_dim: int = 768
    """Width of the tag text feature."""
    num_tags: int | None = 3114
    """Tag nodes incl. extra ontology tags (cosmetic 3114, apparel 4817, food 8640); null = taken from the data."""
    hidden_dim: int = 768
    """h."""
    num_heads: int = 8
    """Attention heads H (d_k = h / H)."""
    num_layers: int = 2
    """L RADAR layers."""
    dropout: float = 0.2
    """Dropout of the gate candidate, the AAN inputs and the scores."""
    use_follow: bool = True
    """Use r3 is_followed_by (False: ablation 'w/o follow', with video_emb_layer = 0)."""
    use_topic: bool = True
    """Use r1 is_subtopic_of (False: ablation 'w/o topic')."""
    bidirectional_topic: bool = False
    """Also use the reverse r1' supertopic_of (ablation)."""
    updater: Literal["gate", "sum"] = "gate"
    """GGT update: gated (paper) or sum (ablation 'w/o gate', SumUpdater)."""
    attention: Literal["relation", "mutual"] = "relation"
    """GGT attention normalisation: softmax within each relation (paper) or 'mutual' (Table 3 ablation 'mutual
    attention', reconstruction): one softmax per destination and head over the incoming edges of all relations, so
    the relations compete for attention mass; the per-relation messages are then updated and reduced as usual."""
    reducer: Literal["aan", "common_unique", "common", "mean", "lmf", "self_attention"] = "aan"
    """Combination of the visual (r2) and linguistic (r1) knowledge into tags: AAN (paper) or the ablations
    ('common_unique': the official mutual-attention row's reducer, Linear((mean(c1, c2) + max(u1, u2)) / 2) with the
    adversarial losses)."""
    adv_layers: int | None = None
    """Layers (from the first) whose tag fusion feeds the adversarial losses: null = all (main model); 1 in several
    official ablation configs (one discriminator)."""
    lmf_rank: int = 3
    """Rank of the LMF reducer."""
    video_emb_layer: int = 2
    """Layer whose video state is scored (= num_layers; 0 for the 'w/o follow' ablations)."""
    combine_norm: bool | None = None
    """LayerNorm on the combined messages of every node type that receives messages (end of CMP). null = the
    official default of ``reducer``: on for 'aan', 'common_unique' and 'common' (always normed in the official
    code), off for 'mean' and 'self_attention' (official ``use_norm=False``) and 'lmf' (no norm in the official
    code). The official 'w/o follow' and 'w/o topic & follow' configs set it on (MeanReducer ``use_norm=True``)."""
    layer_norm_mean_reducer: bool | None = None
    """Older name of ``combine_norm``, read only with ``reducer: mean`` and ``combine_norm: null`` (null = unset)."""

    def __post_init__(self) -> None:
        # updater, attention, reducer: an unknown updater or attention would run the sum updater or the
        # per-relation softmax, an unknown reducer would build no reducer (and no LayerNorm on the combined messages)
        check_literal_fields(self, "model.config")
        for key in ("video_dim", "tag_dim", "hidden_dim", "num_heads", "lmf_rank"):
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        if self.num_tags is not None:  # null: the count comes from the data
            check_range("model.config.num_tags", self.num_tags, ge=1, integer=True)
        # dropout 1 would zero the gate candidate, the AAN inputs and every score while training
        check_range("model.config.dropout", self.dropout, ge=0, lt=1)
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"model.config.num_heads={self.num_heads} must divide model.config.hidden_dim={self.hidden_dim}"
            )
        if not 0 <= self.video_emb_layer <= self.num_layers:
            raise ValueError(
                f"model.config.video_emb_layer={self.video_emb_layer} must be in [0, num_layers={self.num_layers}]"
            )
        if self.num_layers < 1:
            raise ValueError(f"model.config.num_layers={self.num_layers} must be >= 1")
        if self.adv_layers is not None and self.adv_layers < 0:
            raise ValueError(f"model.config.adv_layers={self.adv_layers} must be >= 0 or null")
        if (
            self.reducer == "mean"
            and self.combine_norm is not None
            and self.layer_norm_mean_reducer is not None
            and self.combine_norm != self.layer_norm_mean_reducer
        ):
            raise ValueError(
                f"model.config.combine_norm={self.combine_norm} contradicts its older name "
                f"model.config.layer_norm_mean_reducer={self.layer_norm_mean_reducer}; set only combine_norm"
            )

    @property
    def norm_combined(self) -> bool:
        """Whether the combined messages are LayerNorm-ed (``combine_norm`` resolved, see there)."""
        if self.combine_norm is not None:
            return self.combine_norm
        if self.reducer == "mean" and self.layer_norm_mean_reducer is not None:
            return self.layer_norm_mean_reducer
        return self.reducer in ("aan", "common_unique", "common")

    @property
    def relations(self) -> list[EdgeType]:
        """Message-passing relations of every layer (label relations never pass messages)."""
        rels = [FOLLOWED_BY] if self.use_follow else []
        if self.use_topic:
            rels.append(SUBTOPIC)
            if self.bidirectional_topic:
                rels.append(SUPERTOPIC)
        rels.append(HAS_TAG)
        return rels


class GradientReversal(torch.autograd.Function):
    """GRL: identity forward, gradient × (−1) backward (its own factor stays 1; the schedule scales the loss)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    """Apply the gradient-reversal layer."""
    return GradientReversal.apply(x)


class InputEmbedding(nn.Module):
    """Layer 0 (spec §3.2):  h_v^0 = GELU(W_v BN(x_v) + b_v);  h_t^0 = GELU(W_t BN(x_t + E[t]) + b_t)."""

    def __init__(self, config: RadarConfig):
        super().__init__()
        self.video_norm = nn.BatchNorm1d(config.video_dim)
        self.video_proj = nn.Linear(config.video_dim, config.hidden_dim)
        self.tag_embedding = nn.Embedding(config.num_tags, config.tag_dim)  # default N(0, 1) init
        self.tag_norm = nn.BatchNorm1d(config.tag_dim)
        self.tag_proj = nn.Linear(config.tag_dim, config.hidden_dim)

    def forward(self, video_x: torch.Tensor, tag_x: torch.Tensor, tag_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """video_x (N_v, d_v), tag_x (N_t, d_t), tag_ids (N_t,) global ids -> {'video': (N_v, h), 'tag': (N_t, h)}."""
        return {
            "video": F.gelu(self.video_proj(self.video_norm(video_x))),
            "tag": F.gelu(self.tag_proj(self.tag_norm(tag_x + self.tag_embedding(tag_ids)))),
        }


class GGTConv(MessagePassing):
    r"""Intra-relation attention of the Gated Graph Transformer for one relation r (spec §3.3, stage 1):

    .. math::
        e_{ji} = \mu_r \langle q_i, k_j W^{att}_r \rangle / \sqrt{d_k}, \quad
        \alpha_{ji} = \mathrm{softmax}_{j \in N_r(i)} e_{ji}, \quad
        \tilde m_i^r = \Vert_{heads} \textstyle\sum_j \alpha_{ji}\, v_j W^{msg}_r

    per head; the softmax runs per relation, per head, per destination (not across relations). A destination
    without r-neighbours gets a zero message. For the 'mutual attention' ablation the caller passes ``alpha``
    normalised jointly over several relations (see :func:`mutual_attention`) and the layer only aggregates.

    Shapes: q (N_dst, H, d_k), k and v (N_src, H, d_k) (already relation-transformed), edge_index (2, E) with
    row 0 = source, alpha (E, H) or None -> (N_dst, H·d_k). After a call, ``self.last_alpha`` (E, H) holds the
    attention weights.
    """

    def __init__(self):
        super().__init__(aggr="add", node_dim=0)
        self.last_alpha: torch.Tensor | None = None

    @staticmethod
    def logits(q: torch.Tensor, k: torch.Tensor, priority: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """e_ji = μ_r ⟨q_i, k_j⟩ / sqrt(d_k) for every edge j -> i: (E, H).

        ``index_select``, not ``q[index]``: a node on several edges gets its gradients summed, and the backward of
        ``q[index]`` (an accumulating ``index_put_``) adds them in a thread-dependent order on CPU, so two runs of one
        training script would drift apart; ``index_select``'s backward sums in a fixed order."""
        q_i, k_j = q.index_select(0, edge_index[1]), k.index_select(0, edge_index[0])
        return (q_i * k_j).sum(-1) * priority / math.sqrt(q.shape[-1])

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        priority: torch.Tensor,
        edge_index: torch.Tensor,
        alpha: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if alpha is None:
            alpha = softmax(self.logits(q, k, priority, edge_index).float(), edge_index[1], num_nodes=q.shape[0])
        self.last_alpha = alpha.detach()
        out = self.propagate(edge_index, v=v, alpha=alpha.to(v.dtype), size=(k.shape[0], q.shape[0]))
        return out.reshape(q.shape[0], -1)  # (N_dst, H·d_k)

    def message(self, v_j: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # noqa: D102 (PyG hook)
        return v_j * alpha.unsqueeze(-1)  # (E, H, d_k)


def mutual_attention(logits: list[torch.Tensor], dst: list[torch.Tensor], num_dst: int) -> list[torch.Tensor]:
    """'Mutual attention' ablation (reconstruction, see :class:`RadarConfig`): one softmax per destination and head
    over the incoming edges of all relations into that node type (relations compete), split back per relation.

    logits[r] (E_r, H), dst[r] (E_r,) destination indices -> alpha[r] (E_r, H)."""
    alpha = softmax(torch.cat(logits).float(), torch.cat(dst), num_nodes=num_dst)
    return list(alpha.split([len(e) for e in logits]))


class GatedUpdater(nn.Module):
    """Gated update (the 'gated' in GGT), spec §3.3:  z = σ(W_z m̃ + U_z h + b_z),
    ĥ = GELU(Dropout(W_s (h + m̃))),  m = z ⊙ ĥ + (1 − z) ⊙ h."""

    def __init__(self, hidden_dim: int, dropout: float):
        super().__init__()
        self.w_z = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.u_z = nn.Linear(hidden_dim, hidden_dim)
        self.w_s = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, message: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """message m̃ (N, h), state h^{l−1} (N, h) -> (N, h)."""
        z = torch.sigmoid(self.w_z(message) + self.u_z(state))
        candidate = F.gelu(self.dropout(self.w_s(state + message)))
        return z * candidate + (1 - z) * state


class SumUpdater(nn.Module):
    """Ablation 'w/o gate':  m = m̃ + h."""

    def forward(self, message: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return message + state


def _encoder(h: int) -> nn.Sequential:
    """Linear(h, h) → BatchNorm1d → GELU (an AAN encoder)."""
    return nn.Sequential(nn.Linear(h, h), nn.BatchNorm1d(h), nn.GELU())


class _UniqueCommonDiscriminated(nn.Module):
    """Shared parts of the AAN and its 'common_unique' ablation: dropout, the unique encoders U_1, U_2, the shared
    common encoder C and the source discriminator D(z) = wᵀz + b (w xavier-normal, b = 1). Subclasses fuse."""

    def __init__(self, hidden_dim: int, dropout: float):
        super().__init__()
        h = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.unique1, self.unique2, self.common = _encoder(h), _encoder(h), _encoder(h)
        self.disc_weight = nn.Parameter(torch.empty(1, h))
        self.disc_bias = nn.Parameter(torch.ones(1))

    def _init_discriminator(self) -> None:
        """Subclasses call this last, after building their fusion layers (the official parameter draw order)."""
        nn.init.xavier_normal_(self.disc_weight)

    def discriminate(self, z: torch.Tensor) -> torch.Tensor:
        """D(z) = wᵀz + b: (N, h) -> (N,) logits of 'linguistic source'."""
        return F.linear(z, self.disc_weight, self.disc_bias).squeeze(-1)

    def fuse(self, u1: torch.Tensor, u2: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define fuse()")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x1, x2 (N, h) -> fused (N, h) and discriminator logits: ``unique`` (2N,) for [u1; u2] and ``common``
        (2N,) for [GRL(c1); GRL(c2)], with source labels 0 (visual, x1) then 1 (linguistic, x2)."""
        x1, x2 = self.dropout(x1), self.dropout(x2)
        u1, u2 = self.unique1(x1), self.unique2(x2)
        c1, c2 = self.common(x1), self.common(x2)
        logits = {
            "unique": self.discriminate(torch.cat([u1, u2])),  # no gradient reversal
            "common": self.discriminate(grad_reverse(torch.cat([c1, c2]))),  # D minimises, C maximises
        }
        return self.fuse(u1, u2, c1, c2), logits


class AdversarialAggregation(_UniqueCommonDiscriminated):
    """AAN (spec §3.4): fuse visual knowledge x1 (from videos, r2) and linguistic knowledge x2 (from tags, r1).

    u_k = GELU(BN(U_k x_k)) (unique), c_k = GELU(BN(C x_k)) (shared common encoder);
    AAN(x1, x2) = ½ [tanh(A1 c1 + a1) ⊙ c1 + tanh(A2 c2 + a2) ⊙ c2 + max(u1, u2)].
    A shared source discriminator D(z) = wᵀz + b (w xavier-normal, b = 1) scores u_k directly and c_k through a
    gradient-reversal layer; the losses are in :mod:`radartag.losses`.

    Deviation: the official code initialises only the last layer's discriminator weight (earlier layers keep
    uninitialised memory); here every layer's w is xavier-normal.
    """

    def __init__(self, hidden_dim: int, dropout: float):
        super().__init__(hidden_dim, dropout)
        self.attend1, self.attend2 = nn.Linear(hidden_dim, hidden_dim), nn.Linear(hidden_dim, hidden_dim)
        self._init_discriminator()

    def fuse(self, u1: torch.Tensor, u2: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        return 0.5 * (
            torch.tanh(self.attend1(c1)) * c1 + torch.tanh(self.attend2(c2)) * c2 + torch.maximum(u1, u2)
        )  # fmt: skip


class CommonUniqueAggregation(_UniqueCommonDiscriminated):
    """Reducer of the official mutual-attention ablation ('common_unique'): the AAN's unique and shared common
    encoders and discriminator, but fused as Linear((mean(c1, c2) + max(u1, u2)) / 2) without the tanh gates.
    Returns the fused features and discriminator logits like :class:`AdversarialAggregation`."""

    def __init__(self, hidden_dim: int, dropout: float):
        super().__init__(hidden_dim, dropout)
        self.fusion = nn.Linear(hidden_dim, hidden_dim)
        self._init_discriminator()

    def fuse(self, u1: torch.Tensor, u2: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        return self.fusion(0.5 * (0.5 * (c1 + c2) + torch.maximum(u1, u2)))


class CommonReducer(nn.Module):
    """Ablation 'common only':  (C x1' + C x2') / 2 with x_k' = Dropout(x_k) (as in the AAN) and the shared
    C = Linear → BN → GELU."""

    def __init__(self, hidden_dim: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.common = _encoder(hidden_dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dropout(x1), self.dropout(x2)
        return 0.5 * (self.common(x1) + self.common(x2))


class MeanReducer(nn.Module):
    """Ablation 'mean': mean of the relation messages into tags, each relation weighed alike: (x1 + x2) / 2 with one
    tag→tag relation, (m_r2 + m_r1 + m_r1') / 3 in the bidirectional variant (the official reducer averages the
    stacked per-relation messages, not the visual input against the mean of the two topic directions)."""

    def forward(self, x1: torch.Tensor, *topic: torch.Tensor) -> torch.Tensor:
        if len(topic) == 1:
            return 0.5 * (x1 + topic[0])
        return torch.stack([x1, *topic]).mean(0)


class LMFReducer(nn.Module):
    """Ablation 'LMF' (low-rank multimodal fusion): inputs padded with a constant 1, per-rank factors
    W_k^r ∈ R^{(h+1)×h};  out = Σ_r Π_k ([x_k; 1] W_k^r).

    Each input's factor tensor (R, h+1, h) gets its own xavier-normal draw, as the official two separate
    parameters do (fan_in = (h+1)·h, fan_out = R·h). One draw over the stacked (2, R, h+1, h) tensor would count
    R·(h+1)·h inputs and 2·(h+1)·h outputs and give a std about 2.2 times smaller (R = 3)."""

    def __init__(self, hidden_dim: int, rank: int):
        super().__init__()
        self.factors = nn.Parameter(torch.empty(2, rank, hidden_dim + 1, hidden_dim))
        for k in range(2):  # visual input's factors first, then the linguistic input's
            nn.init.xavier_normal_(self.factors.data[k])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        ones = x1.new_ones(x1.shape[0], 1)
        p1 = torch.einsum("nd,rdh->rnh", torch.cat([x1, ones], 1), self.factors[0])  # (R, N, h)
        p2 = torch.einsum("nd,rdh->rnh", torch.cat([x2, ones], 1), self.factors[1])  # (R, N, h)
        return (p1 * p2).sum(0)  # (N, h)


class SelfAttentionReducer(nn.Module):
    """Ablation 'self-attention': multi-head self-attention over the 2 relation messages of a node, residual, mean.

    With X = [x1; x2] (2, h) per node and per head: Q, K, V = Linear(X) (with bias), A = softmax_j(q_i·k_j / √d_k)
    over the 2 messages, out = mean_i (x_i + Σ_j A_ij v_j) — no output projection, no dropout (official)."""

    def __init__(self, hidden_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.d_k = num_heads, hidden_dim // num_heads
        self.query = nn.Linear(hidden_dim, hidden_dim)
        self.key = nn.Linear(hidden_dim, hidden_dim)
        self.value = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x = torch.stack([x1, x2], 1)  # (N, 2, h)
        shape = (x.shape[0], 2, self.num_heads, self.d_k)
        q, k, v = self.query(x).view(shape), self.key(x).view(shape), self.value(x).view(shape)
        att = torch.einsum("nihd,njhd->nijh", q, k).div(math.sqrt(self.d_k)).softmax(2)  # (N, 2, 2, H)
        out = torch.einsum("nijh,njhd->nihd", att, v).reshape_as(x)  # (N, 2, h)
        return (x + out).mean(1)  # (N, h)


class RadarLayer(nn.Module):
    """One RADAR layer: IMP (a GGT per relation + gated update), then CMP (spec §3.3): videos average their relation
    messages, tags combine visual and linguistic knowledge with the reducer; both then get a LayerNorm per node type
    when ``combine_norm`` resolves to on (main model: on; see :class:`RadarConfig`).

    Relation parameters W^att, W^msg ∈ R^{R×H×d_k×d_k} are xavier-uniform initialised as one tensor (official:
    tiny values), priorities μ ∈ R^{R×H} start at 1.
    """

    def __init__(self, config: RadarConfig):
        super().__init__()
        c = config
        self.relations = c.relations
        h, H = c.hidden_dim, c.num_heads
        self.num_heads, self.d_k = H, h // H
        self.key = nn.ModuleDict({t: nn.Linear(h, h) for t in ("video", "tag")})
        self.value = nn.ModuleDict({t: nn.Linear(h, h) for t in ("video", "tag")})
        self.query = nn.ModuleDict({t: nn.Linear(h, h) for t in ("video", "tag")})
        R = len(self.relations)
        self.rel_att = nn.Parameter(torch.empty(R, H, self.d_k, self.d_k))
        self.rel_msg = nn.Parameter(torch.empty(R, H, self.d_k, self.d_k))
        self.rel_pri = nn.Parameter(torch.ones(R, H))
        nn.init.xavier_uniform_(self.rel_att)
        nn.init.xavier_uniform_(self.rel_msg)
        self.conv = GGTConv()
        self.attention = c.attention
        dst_types = sorted({r[2] for r in self.relations})
        self.updaters = nn.ModuleDict(
            {t: GatedUpdater(h, c.dropout) if c.updater == "gate" else SumUpdater() for t in dst_types}
        )
        self.combine_norm = c.norm_combined
        norm_types = [t for t in ("video", "tag") if t in dst_types and self.combine_norm]  # (parameter order kept)
        self.norms = nn.ModuleDict({t: nn.LayerNorm(h) for t in norm_types})
        self.two_sources = HAS_TAG in self.relations and c.use_topic
        self.reducer_kind = c.reducer
        if self.two_sources:
            if c.reducer == "aan":
                self.reducer = AdversarialAggregation(h, c.dropout)
            elif c.reducer == "common_unique":
                self.reducer = CommonUniqueAggregation(h, c.dropout)
            elif c.reducer == "common":
                self.reducer = CommonReducer(h, c.dropout)
            elif c.reducer == "mean":
                self.reducer = MeanReducer()
            elif c.reducer == "lmf":
                self.reducer = LMFReducer(h, c.lmf_rank)
            elif c.reducer == "self_attention":
                self.reducer = SelfAttentionReducer(h, H)

    def _norm(self, node_type: str, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm of the combined messages when ``combine_norm`` resolves to on, else identity."""
        return self.norms[node_type](x) if self.combine_norm else x

    def relation_messages(
        self, x: dict[str, torch.Tensor], num_dst: dict[str, int], edge_index_dict: dict[EdgeType, torch.Tensor]
    ) -> dict[EdgeType, torch.Tensor]:
        """Stage 1 (IMP): m_i^r for every relation r, on the destination prefix of its destination type."""
        H, d_k = self.num_heads, self.d_k
        qkv = {}
        for r, rel in enumerate(self.relations):
            src, _, dst = rel
            q = self.query[dst](x[dst][: num_dst[dst]]).view(-1, H, d_k)  # (N_dst, H, d_k)
            k = torch.einsum("nhd,hde->nhe", self.key[src](x[src]).view(-1, H, d_k), self.rel_att[r])  # (N_src, H, d_k)
            v = torch.einsum("nhd,hde->nhe", self.value[src](x[src]).view(-1, H, d_k), self.rel_msg[r])
            edge_index = edge_index_dict.get(rel, q.new_zeros(2, 0, dtype=torch.long))
            qkv[rel] = (q, k, v, edge_index)
        alpha: dict[EdgeType, torch.Tensor | None] = dict.fromkeys(self.relations)
        if self.attention == "mutual":  # one softmax over all relations into the same destination type
            for dst in {rel[2] for rel in self.relations}:
                rels = [rel for rel in self.relations if rel[2] == dst]
                logits = [GGTConv.logits(qkv[rel][0], qkv[rel][1], self.rel_pri[self.relations.index(rel)],
                                         qkv[rel][3]) for rel in rels]  # fmt: skip
                alpha.update(zip(rels, mutual_attention(logits, [qkv[rel][3][1] for rel in rels], num_dst[dst]),
                                 strict=True))  # fmt: skip
        out = {}
        for r, rel in enumerate(self.relations):
            q, k, v, edge_index = qkv[rel]
            message = self.conv(q, k, v, self.rel_pri[r], edge_index, alpha[rel])  # (N_dst, h)
            out[rel] = self.updaters[rel[2]](message, x[rel[2]][: num_dst[rel[2]]])
        return out

    def forward(
        self, x: dict[str, torch.Tensor], num_dst: dict[str, int], edge_index_dict: dict[EdgeType, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """x: source-set states per type (N_src_τ, h); num_dst: destination prefix sizes; edge_index_dict: the
        sampled block, local indices (row 0 into the source set, row 1 into the destination prefix).
        Returns destination states per type (num_dst_τ, h) and the AAN discriminator logits (or None)."""
        m = self.relation_messages(x, num_dst, edge_index_dict)
        out: dict[str, torch.Tensor] = {}
        video_in = [m[r] for r in self.relations if r[2] == "video"]
        out["video"] = (
            self._norm("video", torch.stack(video_in).mean(0)) if video_in else x["video"][: num_dst["video"]]
        )
        disc = None
        topic = [m[r] for r in self.relations if r[0] == "tag" and r[2] == "tag"]
        if self.two_sources:
            x1, x2 = m[HAS_TAG], torch.stack(topic).mean(0)  # visual, linguistic knowledge
            if self.reducer_kind in ("aan", "common_unique"):
                fused, disc = self.reducer(x1, x2)
            elif self.reducer_kind == "mean":
                fused = self.reducer(x1, *topic)
            else:
                fused = self.reducer(x1, x2)
            out["tag"] = self._norm("tag", fused)
        else:
            tag_in = topic + ([m[HAS_TAG]] if HAS_TAG in m else [])
            out["tag"] = self._norm("tag", torch.stack(tag_in).mean(0)) if tag_in else x["tag"][: num_dst["tag"]]
        return out, disc


@dataclass
class RadarOutput:
    """Scores (B, K) ⟨h_v, h_t⟩ for the batch videos × all tags, and per layer the AAN discriminator logits."""

    scores: torch.Tensor
    discriminator_logits: list[dict[str, torch.Tensor]] = field(default_factory=list)


class Radar(nn.Module):
    """RADAR: input embedding → L RADAR layers on sampled blocks → dot-product scores (spec §3).

    ``forward(video_x, tag_x, tag_ids, blocks, num_videos)``: ``video_x``/``tag_x`` are the features of layer 0's
    source sets (the first ``num_videos`` videos are the batch; tags are all tags in id order), ``blocks`` lists,
    from layer 1 to L, ``(num_dst, edge_index_dict)`` with destination prefixes (see :mod:`radartag.sampler`).
    Score s(v, t) = ⟨normalize(h_v^{video_emb_layer}), h_t^L⟩ (dropout on both in training).
    """

    def __init__(self, config: RadarConfig):
        super().__init__()
        self.config = config
        self.embedding = InputEmbedding(config)
        self.layers = nn.ModuleList(RadarLayer(config) for _ in range(config.num_layers))
        self.score_dropout = nn.Dropout(config.dropout)
        for p in self.unused_parameters():
            p.requires_grad_(False)

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters built for every layer that the configured ablation never reaches from the loss; they are frozen
        (``requires_grad=False``, left out of the optimizer) rather than not built, so that the random
        initialisation of every other module and the checkpoint keys stay as they were, and DDP without
        ``find_unused_parameters`` finds no trainable parameter without a gradient:

        * the video query of every layer when no relation enters videos ('w/o follow');
        * the tag key and value of every layer when no relation leaves tags ('w/o topic');
        * the video query, updater and LayerNorm of the last layer when its video state is not scored
          (``video_emb_layer < num_layers``; the video states of earlier layers feed the next layer's r2 keys);
        * the AAN / common-unique discriminator of the layers past ``adv_layers`` (their logits are not in the loss).
        """
        c, unused = self.config, []  # modules and parameters
        for i, layer in enumerate(self.layers):
            into_video = any(rel[2] == "video" for rel in layer.relations)
            if not into_video or (i == c.num_layers - 1 and c.video_emb_layer < c.num_layers):
                unused.append(layer.query["video"])
                unused += [d["video"] for d in (layer.updaters, layer.norms) if "video" in d]
            if not any(rel[0] == "tag" for rel in layer.relations):
                unused += [layer.key["tag"], layer.value["tag"]]
            reducer = getattr(layer, "reducer", None)
            if isinstance(reducer, _UniqueCommonDiscriminated) and c.adv_layers is not None and i >= c.adv_layers:
                unused += [reducer.disc_weight, reducer.disc_bias]
        return [p for u in unused for p in ([u] if isinstance(u, nn.Parameter) else u.parameters())]

    def forward(
        self,
        video_x: torch.Tensor,
        tag_x: torch.Tensor,
        tag_ids: torch.Tensor,
        blocks: list[tuple[dict[str, int], dict[EdgeType, torch.Tensor]]],
        num_videos: int,
    ) -> RadarOutput:
        if len(blocks) != self.config.num_layers:
            raise ValueError(f"got {len(blocks)} sampled blocks for model.config.num_layers={self.config.num_layers}")
        x = self.embedding(video_x, tag_x, tag_ids)
        video_states = [x["video"][:num_videos]]
        disc = []
        for i, (layer, (num_dst, edges)) in enumerate(zip(self.layers, blocks, strict=True)):
            x, logits = layer(x, num_dst, edges)
            video_states.append(x["video"][:num_videos])
            if logits is not None and (self.config.adv_layers is None or i < self.config.adv_layers):
                disc.append(logits)
        h_v = F.normalize(video_states[self.config.video_emb_layer], dim=-1)  # (B, h)
        h_t = x["tag"][: self.config.num_tags]  # (K, h)
        return RadarOutput(self.score_dropout(h_v) @ self.score_dropout(h_t).T, disc)  # (B, K)
