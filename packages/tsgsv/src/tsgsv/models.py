"""The streaming grounding model of the paper (TwinNet + language-guided feature compressor), spec §3.

Reads top to bottom: positional encoding, sentence encoder (§3.2), video projection (§3.3), the feature
compressors (§3.4 and its ablations), decoder stacks (§3.5), the TwinNet / temporal-pincer branch (§3.6), the
dot-product span predictor (§3.7), and the full :class:`StreamingTSGV` model.

Shape letters: B windows, T time steps of a memory, L sentence tokens (20), D input feature width, h hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from mmzoo.config import check_literal_fields, check_range
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = [
    "TSGSVConfig",
    "PositionalEncoding",
    "SentenceEncoder",
    "VideoProjection",
    "LanguageGuidedCompressor",
    "TokenLearnerCompressor",
    "LSTRCompressor",
    "SCDMCompressor",
    "CQACompressor",
    "IdentityCompressor",
    "DecoderStack",
    "PincerLayer",
    "SpanPredictor",
    "TSGSVOutput",
    "StreamingTSGV",
    "causal_mask",
]

CompressorKind = Literal["language_guided", "token_learner", "lstr", "scdm", "cqa", "none"]


@dataclass
class TSGSVConfig:
    """Architecture of the streaming grounding model (defaults: ActivityNet Captions, spec §3.11)."""

    video_dim: int = 500
    """d_v: width of one video feature row (ANet C3D-PCA 500, TACoS C3D 4096, MAD CLIP 512)."""
    text_dim: int = 768
    """d_s: width of one sentence token feature (BERT 768, MAD CLIP 512)."""
    hidden_dim: int = 1024
    """h: model width (ANet/TACoS 1024, MAD 512)."""
    ffn_dim: int = 1024
    """FFN width of the decoder layers."""
    num_heads: int = 8
    """Attention heads of every decoder / pincer layer."""
    dropout: float = 0.5
    """Model dropout p (ANet 0.5, TACoS/MAD 0.2)."""
    short_memory: int = 8
    """M_s: frames of the short memory (the current window)."""
    long_memory: int = 64
    """M_l: frames of the long memory before the window."""
    future_memory: int = 64
    """M_f: frames the twin branch sees after the window (training only)."""
    max_text_len: int = 20
    """L: sentence tokens after padding/truncation."""
    linear_before: bool = True
    """Project video rows and sentence tokens Linear→LayerNorm→GELU (ANet/TACoS); False for MAD (CLIP, h = d)."""
    gru_layers: int = 2
    """Layers of the bidirectional sentence GRU."""
    gru_dropout: float = 0.5
    """Dropout between GRU layers."""
    sentence_final_norm: bool = True
    """LayerNorm(h) on every sentence token after the GRU (padding included, which becomes its bias), before Q and
    the pooled q are taken. Official: ``RNNSentenceEncoder(norm_after=True)`` by default, and no official config
    overrides it (``norm_after=False`` is set on the video encoder only). Deviation from spec §3.2 item 4, which
    reads "no final norm"; ``false`` gives the spec's reading."""
    compressor: CompressorKind = "language_guided"
    """Long/future memory compressor: language_guided (the paper's MultimodalTokenLearner); ablations (spec §3.4):
    token_learner, lstr, scdm (TokenLearner + semantic-conditioned modulation), cqa (TokenLearner + context-query
    attention) or none."""
    compressor_tokens: list[int] = field(default_factory=lambda: [16, 16])
    """Output tokens of each stacked compressor stage (ANet/MAD [16, 16], TACoS [16])."""
    gate_dropout: float = 0.4
    """Dropout after the compressor's scalar gates (hard-coded 0.4 in the official code)."""
    num_decoder_layers: int = 2
    """Layers of the ordinary causal decoder; the twin decoders get one layer fewer."""
    use_long_memory: bool = True
    """False: the long memory is replaced by one learned null token (ablation 'short memory only', §8c)."""
    future_usage: Literal["twin", "anticipation", "none"] = "twin"
    """twin: the TwinNet (TPN) branch (paper); anticipation: M_f learned future tokens appended to the short
    memory ('FutureAnticipation' ablation); none: no future branch."""
    pincer_memory: Literal["long_and_future", "future"] = "long_and_future"
    """Memory of the pincer's cross-attention. The official code always uses [Z_long; F_fut] (a condition that
    is always true); 'future' is what that condition seemingly intended."""
    temperature: float = 16.0
    """τ of the cosine predictor."""

    def __post_init__(self) -> None:
        # compressor, future_usage and pincer_memory are read with if/else: a misspelt future_usage would drop the
        # twin branch, a misspelt pincer_memory would attend to the future memory only
        check_literal_fields(self, "model.config")
        for key in ("video_dim", "text_dim", "hidden_dim", "ffn_dim", "num_heads", "gru_layers"):
            check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        for key in ("dropout", "gru_dropout", "gate_dropout"):
            check_range(f"model.config.{key}", getattr(self, key), ge=0, lt=1)
        # the predictor's logits are τ·cos: 0 makes them constant, a negative τ flips every score
        check_range("model.config.temperature", self.temperature, gt=0)
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"model.config.num_heads={self.num_heads} must divide model.config.hidden_dim={self.hidden_dim}"
            )
        if not self.linear_before and (self.video_dim != self.hidden_dim or self.text_dim != self.hidden_dim):
            raise ValueError(
                "model.config.linear_before=false needs video_dim == text_dim == hidden_dim "
                f"(got {self.video_dim}, {self.text_dim}, {self.hidden_dim})"
            )
        if self.num_decoder_layers < 1:
            raise ValueError(f"model.config.num_decoder_layers={self.num_decoder_layers} must be >= 1")
        if self.compressor != "none" and not self.compressor_tokens:
            raise ValueError("model.config.compressor_tokens must list at least one stage (e.g. [16, 16])")
        if any(n < 1 for n in self.compressor_tokens):
            raise ValueError(f"model.config.compressor_tokens={self.compressor_tokens} must be positive")
        for key in ("short_memory", "long_memory", "future_memory", "max_text_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.config.{key}={getattr(self, key)} must be >= 1")

    @property
    def max_positions(self) -> int:
        """Longest sequence the positional encoding covers: max(M_l, M_s + M_f)."""
        return max(self.long_memory, self.short_memory + self.future_memory)


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """Boolean (length, length) attention mask, True where position i may NOT attend to j (j > i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


def flip_time(x: torch.Tensor) -> torch.Tensor:
    """Reverse a (B, T, ...) sequence in time."""
    return x.flip(1)


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal PE (sin on even, cos on odd channels, base 10000), added then dropout (spec §3.3)."""

    def __init__(self, dim: int, max_len: int, dropout: float):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)  # (T, 1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))  # (h/2,)
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div[: dim // 2])
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, h) -> (B, T, h); positions counted from 0 at x[:, 0]."""
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} steps exceeds the positional encoding ({self.pe.shape[0]})")
        return self.dropout(x + self.pe[: x.shape[1]].to(x.dtype))


class SentenceEncoder(nn.Module):
    """Token projection + 2-layer bidirectional GRU, directions fused by mean, then (``sentence_final_norm``,
    official) a LayerNorm on every position (spec §3.2).

    Returns the token sequence Q (B, L, h) (beyond the true length: zero without the final norm, its bias with it)
    and the pooled query q = (1/L) Σ_l Q_l (B, h), a plain mean over all L positions, padding included (official).
    """

    def __init__(self, config: TSGSVConfig):
        super().__init__()
        h = config.hidden_dim
        self.project = (
            nn.Sequential(nn.Dropout(0.0), nn.Linear(config.text_dim, h), nn.LayerNorm(h), nn.GELU())
            if config.linear_before
            else nn.Identity()
        )
        self.gru = nn.GRU(
            h,
            h,
            num_layers=config.gru_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.gru_dropout if config.gru_layers > 1 else 0.0,
        )
        self.final_norm = nn.LayerNorm(h) if config.sentence_final_norm else nn.Identity()

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L, d_s), lengths (B,) -> (Q (B, L, h), q (B, h))."""
        B, L, _ = tokens.shape
        x = self.project(tokens)  # (B, L, h)
        valid = torch.arange(L, device=x.device)[None] < lengths[:, None]  # (B, L)
        x = x * valid.unsqueeze(-1).to(x.dtype)  # zero positions >= ℓ
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, 2h)
        tokens_out = self.final_norm(out.view(B, L, 2, -1).mean(2))  # (B, L, h)   mean of both directions, then LN
        return tokens_out, tokens_out.mean(1)  # q: mean over all L positions (padding included)


class VideoProjection(nn.Module):
    """Shared projection of short/long/future memories: Linear→LayerNorm→GELU, invalid rows set to 0 (§3.3)."""

    def __init__(self, config: TSGSVConfig):
        super().__init__()
        h = config.hidden_dim
        self.project = (
            nn.Sequential(nn.Linear(config.video_dim, h), nn.LayerNorm(h), nn.GELU())
            if config.linear_before
            else nn.Identity()
        )

    def forward(self, frames: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
        """frames (B, T, d_v), invalid (B, T) bool (True = padding) -> (B, T, h)."""
        return self.project(frames) * (~invalid).unsqueeze(-1).to(frames.dtype)


def _gate(h: int, dropout: float, gate_dropout: float) -> nn.Sequential:
    """G = Linear(h,2h) → GELU → Dropout → Linear(2h,1) → tanh → GELU → Dropout(0.4) (spec §3.4)."""
    return nn.Sequential(
        nn.Linear(h, 2 * h), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * h, 1), nn.Tanh(), nn.GELU(),
        nn.Dropout(gate_dropout),
    )  # fmt: skip


class LanguageGuidedCompressor(nn.Module):
    """The language-guided feature compressor (official ``MultimodalTokenLearner``), spec §3.4.

    A_v = softmax_T(MLP_v(X)ᵀ), F_v = A_v X (query-agnostic, TokenLearner style);
    A_q = softmax_T((W_a tanh(W_x X + b_x + W_q q̄))ᵀ), F_q = A_q X (language-guided, additive attention);
    g_v = G_v(mean_T X), g_q = G_q(q̄);  Z = LayerNorm_{no affine}(g_v F_v + g_q F_q).
    """

    def __init__(self, hidden_dim: int, num_tokens: int, dropout: float, gate_dropout: float):
        super().__init__()
        h, n = hidden_dim, num_tokens
        self.visual_mlp = nn.Sequential(
            nn.Linear(h, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, n), nn.Dropout(dropout)
        )
        self.drop_x = nn.Dropout(dropout)
        self.drop_q = nn.Dropout(dropout)
        self.w_x = nn.Linear(h, h)
        self.w_q = nn.Linear(h, h, bias=False)
        self.w_a = nn.Linear(h, n, bias=False)
        self.visual_gate = _gate(h, dropout, gate_dropout)
        self.query_gate = _gate(h, dropout, gate_dropout)
        self.norm = nn.LayerNorm(h, elementwise_affine=False)

    def selection(self, x: torch.Tensor, query_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Selection maps and gates: A_v, A_q (B, n, T); g_v, g_q (B, 1, 1)."""
        q_bar = query_tokens.mean(1, keepdim=True)  # (B, 1, h)  mean over all L positions
        a_v = self.visual_mlp(x).transpose(1, 2).softmax(-1)  # (B, n, T)
        scores = self.w_a(torch.tanh(self.w_x(self.drop_x(x)) + self.w_q(self.drop_q(q_bar))))  # (B, T, n)
        a_q = scores.transpose(1, 2).softmax(-1)  # (B, n, T)
        g_v = self.visual_gate(x.mean(1, keepdim=True))  # (B, 1, 1)
        g_q = self.query_gate(q_bar)  # (B, 1, 1)
        return {"a_v": a_v, "a_q": a_q, "g_v": g_v, "g_q": g_q}

    def forward(self, x: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        """x (B, T, h), query_tokens (B, L, h) -> Z (B, n, h)."""
        s = self.selection(x, query_tokens)
        f_v = s["a_v"] @ x  # (B, n, h)
        f_q = s["a_q"] @ x  # (B, n, h)
        return self.norm(s["g_v"] * f_v + s["g_q"] * f_q)


class TokenLearnerCompressor(nn.Module):
    """Ablation: query-agnostic selection F_v = softmax_T(MLP_v(X)ᵀ) X → LayerNorm → one Transformer encoder
    layer (h, heads, FFN h, GELU) (official ``TokenLearner``)."""

    def __init__(self, hidden_dim: int, num_tokens: int, num_heads: int, dropout: float):
        super().__init__()
        h = hidden_dim
        self.visual_mlp = nn.Sequential(
            nn.Linear(h, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, num_tokens), nn.Dropout(dropout)
        )
        self.norm = nn.LayerNorm(h)
        self.encoder = nn.TransformerEncoderLayer(h, num_heads, h, dropout, activation="gelu", batch_first=True)

    def forward(self, x: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        """x (B, T, h) -> (B, n, h); query_tokens unused (query-agnostic)."""
        f_v = self.visual_mlp(x).transpose(1, 2).softmax(-1) @ x  # (B, n, h)
        return self.encoder(self.norm(f_v))


class LSTRCompressor(nn.Module):
    """Ablation: n learnable tokens (xavier-normal) cross-attending to X in one Transformer decoder layer
    (FFN 2h, GELU) (official ``LSTRCompressor``)."""

    def __init__(self, hidden_dim: int, num_tokens: int, num_heads: int, dropout: float):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(num_tokens, hidden_dim))
        nn.init.xavier_normal_(self.tokens)
        self.decoder = nn.TransformerDecoderLayer(
            hidden_dim, num_heads, 2 * hidden_dim, dropout, activation="gelu", batch_first=True
        )

    def forward(self, x: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        """x (B, T, h) -> (B, n, h); query_tokens unused."""
        tgt = self.tokens.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, n, h)
        return self.decoder(tgt, x)


def _token_learner_mlp(h: int, n: int, dropout: float) -> nn.Sequential:
    """MLP_v = Linear(h,h) → GELU → Dropout → Linear(h,n) → Dropout: one selection score per output token."""
    return nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Dropout(dropout), nn.Linear(h, n), nn.Dropout(dropout))


class SCDMCompressor(nn.Module):
    """Ablation: TokenLearner selection followed by semantic-conditioned dynamic modulation (official
    ``SCDMTokenLearner``; SCDM = Yuan et al., NeurIPS 2019), spec §3.4.

    F = softmax_T(MLP_v(X)ᵀ) X  (B, n, h);  for every selected token i an additive attention over the L query tokens
    ρ_i = softmax_L(w · tanh(W_f F_i + b_f + W_q Q_l))  (W_q without bias, Dropout on both inputs, w without bias);
    c_i = Σ_l ρ_il Q_l;  γ_i = tanh(W_γ c_i + b_γ), β_i = tanh(W_β c_i + b_β);
    Z_i = LayerNorm_{no affine}(F_i + γ_i ⊙ F_i + β_i).
    The softmax runs over all L positions, zero padding included (the query tokens are zero there).
    """

    def __init__(self, hidden_dim: int, num_tokens: int, dropout: float):
        super().__init__()
        h = hidden_dim
        self.visual_mlp = _token_learner_mlp(h, num_tokens, dropout)
        self.w_f = nn.Sequential(nn.Dropout(dropout), nn.Linear(h, h))
        self.w_q = nn.Sequential(nn.Dropout(dropout), nn.Linear(h, h, bias=False))
        self.w_att = nn.Linear(h, 1, bias=False)
        self.w_gamma = nn.Sequential(nn.Dropout(dropout), nn.Linear(h, h), nn.Tanh())
        self.w_beta = nn.Sequential(nn.Dropout(dropout), nn.Linear(h, h), nn.Tanh())
        self.norm = nn.LayerNorm(h, elementwise_affine=False)

    def modulation(self, selected: torch.Tensor, query_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """selected F (B, n, h), query Q (B, L, h) -> attention ρ (B, n, L), context c, γ, β (B, n, h)."""
        scores = self.w_att(torch.tanh(self.w_f(selected).unsqueeze(2) + self.w_q(query_tokens).unsqueeze(1)))
        rho = scores.squeeze(-1).softmax(-1)  # (B, n, L)
        context = rho @ query_tokens  # (B, n, h)
        return {"rho": rho, "context": context, "gamma": self.w_gamma(context), "beta": self.w_beta(context)}

    def forward(self, x: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        """x (B, T, h), query_tokens (B, L, h) -> (B, n, h)."""
        f = self.visual_mlp(x).transpose(1, 2).softmax(-1) @ x  # (B, n, h)
        m = self.modulation(f, query_tokens)
        return self.norm(f + m["gamma"] * f + m["beta"])


class CQACompressor(nn.Module):
    """Ablation: TokenLearner selection followed by context-query attention fusion (official ``CQATokenLearner``;
    CQA as in QANet / VSLNet), spec §3.4.

    F = LayerNorm(softmax_T(MLP_v(X)ᵀ) X)  (B, n, h);  S = Drop(F) Drop(Q)ᵀ  (B, n, L) (plain dot product);
    S_r = softmax over L, S_c = softmax over n;  A = S_r Q (context-to-query), B = S_r S_cᵀ F (query-to-context);
    Z = LayerNorm(W_1 F + W_2 A + W_3 (F ⊙ A) + W_4 (F ⊙ B)), the W_i Linear(h, h) with bias (the official code sums
    four projections instead of projecting the concatenation [F; A; F⊙A; F⊙B], which is the same linear map).
    """

    def __init__(self, hidden_dim: int, num_tokens: int, dropout: float):
        super().__init__()
        h = hidden_dim
        self.visual_mlp = _token_learner_mlp(h, num_tokens, dropout)
        self.select_norm = nn.LayerNorm(h)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.ModuleList(nn.Linear(h, h) for _ in range(4))
        self.fusion_norm = nn.LayerNorm(h)

    def attention(self, selected: torch.Tensor, query_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """selected F (B, n, h), query Q (B, L, h) -> S_r, S_c (B, n, L); A, B (B, n, h)."""
        sim = self.drop(selected) @ self.drop(query_tokens).transpose(1, 2)  # (B, n, L)
        s_r, s_c = sim.softmax(2), sim.softmax(1)
        a = s_r @ query_tokens  # (B, n, h)
        b = s_r @ s_c.transpose(1, 2) @ selected  # (B, n, h)
        return {"s_r": s_r, "s_c": s_c, "a": a, "b": b}

    def forward(self, x: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        """x (B, T, h), query_tokens (B, L, h) -> (B, n, h)."""
        f = self.select_norm(self.visual_mlp(x).transpose(1, 2).softmax(-1) @ x)  # (B, n, h)
        att = self.attention(f, query_tokens)
        w1, w2, w3, w4 = self.proj
        return self.fusion_norm(w1(f) + w2(att["a"]) + w3(f * att["a"]) + w4(f * att["b"]))


class IdentityCompressor(nn.Module):
    """Ablation 'no compressor' (official ``DoNothingCompressor``): the memory is used as it is."""

    def forward(self, x: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        return x


class DecoderStack(nn.Module):
    """``num_layers`` post-norm Transformer decoder layers (d_model h, FFN, GELU, batch-first), no final norm.

    Zero layers is the identity (the TACoS twin decoders). Self-attention is causal (position i attends j ≤ i).
    """

    def __init__(self, config: TSGSVConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                config.hidden_dim, config.num_heads, config.ffn_dim, config.dropout, activation="gelu",
                batch_first=True,
            )
            for _ in range(num_layers)
        )  # fmt: skip

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x (B, T, h), memory (B, T_m, h) -> (B, T, h)."""
        mask = causal_mask(x.shape[1], x.device)
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=mask)
        return x


class PincerLayer(nn.Module):
    """Temporal pincer fusion (no FFN), spec §3.6 step 4:
    X = LN_1(X + Drop(MHA(X, X, X)));  X_tpn = LN_2(X + Drop(MHA(X, memory, memory)))."""

    def __init__(self, config: TSGSVConfig):
        super().__init__()
        h = config.hidden_dim
        self.self_attn = nn.MultiheadAttention(h, config.num_heads, dropout=config.dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(h, config.num_heads, dropout=config.dropout, batch_first=True)
        self.drop1 = nn.Dropout(config.dropout)
        self.drop2 = nn.Dropout(config.dropout)
        self.norm1 = nn.LayerNorm(h)
        self.norm2 = nn.LayerNorm(h)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x (B, M_s, h), memory (B, T_m, h) -> (B, M_s, h)."""
        x = self.norm1(x + self.drop1(self.self_attn(x, x, x, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.cross_attn(x, memory, memory, need_weights=False)[0]))


class SpanPredictor(nn.Module):
    """Dot-product span head, spec §3.7:  x_{b,t,c} = τ · cos(P_v(h_{b,t})_c, P_s(q_b)_c), c ∈ {start, end, sem}."""

    def __init__(self, hidden_dim: int, temperature: float):
        super().__init__()
        self.frame_proj = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.query_proj = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.temperature = temperature

    def forward(self, frames: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, h), query (B, h) -> logits (B, T, 3) and frame head features (B, T, 3, h)."""
        B, T, h = frames.shape
        feats = self.frame_proj(frames).view(B, T, 3, h)  # (B, T, 3, h)
        q = self.query_proj(query).view(B, 1, 3, h)  # (B, 1, 3, h)
        cos = (F.normalize(feats.float(), dim=-1) * F.normalize(q.float(), dim=-1)).sum(-1)  # (B, T, 3)
        return self.temperature * cos.to(frames.dtype), feats


@dataclass
class TSGSVOutput:
    """Model outputs: main (causal) logits (B, M_s, 3) in order (start, end, sem), their head features
    (B, M_s, 3, h); twin logits / features when the TwinNet branch ran, else None."""

    logits: torch.Tensor
    head_features: torch.Tensor
    twin_logits: torch.Tensor | None = None
    twin_head_features: torch.Tensor | None = None


class StreamingTSGV(nn.Module):
    """The streaming grounding model (official ``BaseStreamingTSGV`` + ``TPNInteractor`` + ``DotProductPredictorTPN``).

    At test time only the causal path runs: sentence encoder → compressed long memory Z_long → causal decoder
    over the short memory → span head. In training, when future memories are given and
    ``future_usage='twin'``, the TwinNet branch (§3.6) also runs and feeds the twin head.
    """

    def __init__(self, config: TSGSVConfig):
        super().__init__()
        self.config = config
        c = config
        h = c.hidden_dim
        self.sentence_encoder = SentenceEncoder(c)
        self.video_projection = VideoProjection(c)
        self.pos = PositionalEncoding(h, c.max_positions, c.dropout)
        stages: list[nn.Module] = []
        if c.compressor == "none":
            stages.append(IdentityCompressor())
        for n in c.compressor_tokens if c.compressor != "none" else []:
            if c.compressor == "language_guided":
                stages.append(LanguageGuidedCompressor(h, n, c.dropout, c.gate_dropout))
            elif c.compressor == "token_learner":
                stages.append(TokenLearnerCompressor(h, n, c.num_heads, c.dropout))
            elif c.compressor == "lstr":
                stages.append(LSTRCompressor(h, n, c.num_heads, c.dropout))
            elif c.compressor == "scdm":
                stages.append(SCDMCompressor(h, n, c.dropout))
            elif c.compressor == "cqa":
                stages.append(CQACompressor(h, n, c.dropout))
            else:
                raise ValueError(f"model.config.compressor={c.compressor!r} is not one of {CompressorKind.__args__}")
        # The compressors serve the long memory and the twin's future memory. With neither (ablation 'short memory only')
        # they are still built, so that every other module starts from the same weights as in the variants that use
        # them, but not kept: parameters without gradient would stop DDP (unused parameters) and sit in the optimizer.
        self.compressors = nn.ModuleList(stages if c.use_long_memory or c.future_usage == "twin" else [])
        if not c.use_long_memory:
            self.null_memory = nn.Parameter(torch.zeros(1, 1, h))
            nn.init.xavier_normal_(self.null_memory)
        self.decoder = DecoderStack(c, c.num_decoder_layers)
        self.head = SpanPredictor(h, c.temperature)
        if c.future_usage == "anticipation":
            self.future_tokens = nn.Parameter(torch.empty(c.future_memory, h))
            nn.init.xavier_normal_(self.future_tokens)
        if c.future_usage == "twin":
            self.twin_forward = DecoderStack(c, c.num_decoder_layers - 1)
            self.twin_backward = DecoderStack(c, c.num_decoder_layers - 1)
            self.pincer = PincerLayer(c)
            self.twin_head = SpanPredictor(h, c.temperature)

    def encode_sentence(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L, d_s), lengths (B,) -> (Q (B, L, h), q (B, h)). Computed once per query when streaming."""
        if tokens.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"sentence token features have width {tokens.shape[-1]}, model.config.text_dim={self.config.text_dim}"
            )
        return self.sentence_encoder(tokens, lengths)

    def compress(self, memory: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        """Z = C_k(…C_1(PE(memory))) for a projected memory (B, T, h) -> (B, n, h)."""
        z = self.pos(memory)
        for stage in self.compressors:
            z = stage(z, query_tokens)
        return z

    def forward(
        self,
        short: torch.Tensor,
        short_mask: torch.Tensor,
        long: torch.Tensor,
        long_mask: torch.Tensor,
        sentence: torch.Tensor | None = None,
        sentence_length: torch.Tensor | None = None,
        future: torch.Tensor | None = None,
        future_mask: torch.Tensor | None = None,
        encoded_sentence: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> TSGSVOutput:
        """Score every position of the short memory.

        Shapes: short (B, M_s, d_v), short_mask (B, M_s) bool True = padding; long (B, M_l, d_v), long_mask;
        sentence (B, L, d_s), sentence_length (B,) — or ``encoded_sentence`` = (Q, q) from
        :meth:`encode_sentence`; future (B, M_f, d_v), future_mask (training only, may be None).
        Returns :class:`TSGSVOutput` with logits (B, M_s, 3).
        """
        if encoded_sentence is None:
            if sentence is None or sentence_length is None:
                raise ValueError("StreamingTSGV.forward needs sentence + sentence_length or encoded_sentence")
            encoded_sentence = self.encode_sentence(sentence, sentence_length)
        query_tokens, query = encoded_sentence  # (B, L, h), (B, h)
        if short.shape[-1] != self.config.video_dim:
            raise ValueError(
                f"video features have width {short.shape[-1]}, model.config.video_dim={self.config.video_dim}"
            )
        B, M_s = short.shape[:2]
        e_s = self.video_projection(short, short_mask)  # (B, M_s, h)
        if self.config.use_long_memory:
            z_long = self.compress(self.video_projection(long, long_mask), query_tokens)  # (B, n, h)
        else:
            z_long = self.null_memory.expand(B, -1, -1)  # (B, 1, h)
        if self.config.future_usage == "anticipation":
            x = torch.cat([e_s, self.future_tokens.unsqueeze(0).expand(B, -1, -1)], 1)  # (B, M_s + M_f, h)
            s = self.decoder(self.pos(x), z_long)[:, :M_s]  # (B, M_s, h)
        else:
            s = self.decoder(self.pos(e_s), z_long)  # (B, M_s, h)
        logits, feats = self.head(s, query)
        out = TSGSVOutput(logits, feats)
        if self.config.future_usage == "twin" and future is not None:
            if future_mask is None:
                future_mask = torch.zeros(future.shape[:2], dtype=torch.bool, device=future.device)
            out.twin_logits, out.twin_head_features = self.twin(s, z_long, future, future_mask, query_tokens, query)
        return out

    def twin(
        self,
        s: torch.Tensor,
        z_long: torch.Tensor,
        future: torch.Tensor,
        future_mask: torch.Tensor,
        query_tokens: torch.Tensor,
        query: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The TwinNet / temporal pincer branch (spec §3.6), training only.

        F_fut = C(PE(flip(E_f)));  S_f = Dec_fwd(PE(S), Z_long);  S_b = Dec_inv(PE(flip(S)), F_fut)  (causal on the
        reversed sequence, i.e. anti-causal in time);  X = S_f + flip(S_b);  X_tpn = Pincer(X, [Z_long; F_fut]).
        Returns twin logits (B, M_s, 3) and twin head features (B, M_s, 3, h).
        """
        e_f = self.video_projection(future, future_mask)  # (B, M_f, h)
        f_fut = self.compress(flip_time(e_f), query_tokens)  # (B, n, h)  index 0 = farthest future frame
        s_f = self.twin_forward(self.pos(s), z_long)  # (B, M_s, h)
        s_b = self.twin_backward(self.pos(flip_time(s)), f_fut)  # (B, M_s, h)  reversed time
        x = s_f + flip_time(s_b)  # (B, M_s, h)
        memory = torch.cat([z_long, f_fut], 1) if self.config.pincer_memory == "long_and_future" else f_fut
        x_tpn = self.pincer(x, memory)  # (B, M_s, h)
        return self.twin_head(x_tpn, query)
