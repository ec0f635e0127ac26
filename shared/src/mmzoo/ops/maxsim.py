"""Token-level max-similarity pooling for fine-grained text-video matching.

Given text tokens ``t`` (B_t, L_t, D) with mask ``a`` (B_t, L_t) and video tokens ``v`` (B_v, L_v, D) with mask
``b`` (B_v, L_v), the text-to-video score is

    S_t2v[i, j] = Σ_l w[i, l] · max_{m : b[j, m]} ⟨t[i, l], v[j, m]⟩        (sum over l with a[i, l])

and the video-to-text score is

    S_v2t[i, j] = Σ_m u[j, m] · max_{l : a[i, l]} ⟨t[i, l], v[j, m]⟩        (sum over m with b[j, m])

with token weights ``w`` (B_t, L_t) and ``u`` (B_v, L_v) given, or uniform over the valid tokens
(``1 / #valid``). Padded tokens get weight zero. A row with no valid token gives score 0.

Neither path materialises the (B_t, B_v, L_t, L_v) tensor at once: the reference works in chunks of videos
(``chunk_size``), recomputing each chunk in the backward pass (activation checkpointing); the Triton kernel
works in tiles.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["HAS_TRITON", "token_max_sim", "token_max_sim_reference"]

try:  # Triton ships with CUDA builds of torch on Linux
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the platform
    HAS_TRITON = False

_NEG = -1e30


def _check(t: torch.Tensor, tm: torch.Tensor, v: torch.Tensor, vm: torch.Tensor, w, u) -> None:
    if t.dim() != 3 or v.dim() != 3:
        raise ValueError(f"token_max_sim: text (B_t, L_t, D) and video (B_v, L_v, D) expected, got {tuple(t.shape)} and {tuple(v.shape)}")
    if t.shape[-1] != v.shape[-1]:
        raise ValueError(f"token_max_sim: feature sizes differ: text D={t.shape[-1]}, video D={v.shape[-1]}")
    if tm.shape != t.shape[:2]:
        raise ValueError(f"token_max_sim: text_mask shape {tuple(tm.shape)} != text tokens {tuple(t.shape[:2])}")
    if vm.shape != v.shape[:2]:
        raise ValueError(f"token_max_sim: video_mask shape {tuple(vm.shape)} != video tokens {tuple(v.shape[:2])}")
    if w is not None and w.shape != t.shape[:2]:
        raise ValueError(f"token_max_sim: text_weights shape {tuple(w.shape)} != {tuple(t.shape[:2])}")
    if u is not None and u.shape != v.shape[:2]:
        raise ValueError(f"token_max_sim: video_weights shape {tuple(u.shape)} != {tuple(v.shape[:2])}")


def _weights(mask: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Given weights times the mask, or uniform 1/#valid over valid tokens; float32."""
    m = mask.to(torch.float32)
    if weights is None:
        return m / m.sum(-1, keepdim=True).clamp_min(1.0)
    return weights.to(torch.float32) * m


def _chunk_scores(t, tm, w, v, vm, u):
    """Scores of all texts against one chunk of videos. Shapes: t (B_t, L_t, D), v (C, L_v, D)."""
    sim = torch.einsum("ild,jmd->ijlm", t.float(), v.float())  # (B_t, C, L_t, L_v)
    valid = tm[:, None, :, None] & vm[None, :, None, :]  # (B_t, C, L_t, L_v)
    sim = sim.masked_fill(~valid, _NEG)
    t_max = sim.amax(dim=3)  # (B_t, C, L_t): best video token per text token
    v_max = sim.amax(dim=2)  # (B_t, C, L_v): best text token per video token
    t_max = torch.where(tm[:, None, :] & vm.any(-1)[None, :, None], t_max, torch.zeros_like(t_max))
    v_max = torch.where(vm[None, :, :] & tm.any(-1)[:, None, None], v_max, torch.zeros_like(v_max))
    t2v = (t_max * w[:, None, :]).sum(-1)  # (B_t, C)
    v2t = (v_max * u[None, :, :]).sum(-1)  # (B_t, C)
    return t2v, v2t


def token_max_sim_reference(
    text: torch.Tensor,
    text_mask: torch.Tensor,
    video: torch.Tensor,
    video_mask: torch.Tensor,
    text_weights: torch.Tensor | None = None,
    video_weights: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch reference of :func:`token_max_sim`: chunks of ``chunk_size`` videos, float32 accumulation,
    each chunk recomputed in backward so peak memory is O(B_t · chunk · L_t · L_v)."""
    _check(text, text_mask, video, video_mask, text_weights, video_weights)
    tm, vm = text_mask.bool(), video_mask.bool()
    w, u = _weights(tm, text_weights), _weights(vm, video_weights)
    t2v, v2t = [], []
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (text, video, text_weights, video_weights)
    )
    for s in range(0, video.shape[0], chunk_size):
        args = (text, tm, w, video[s : s + chunk_size], vm[s : s + chunk_size], u[s : s + chunk_size])
        a, b = checkpoint(_chunk_scores, *args, use_reentrant=False) if needs_grad else _chunk_scores(*args)
        t2v.append(a)
        v2t.append(b)
    return torch.cat(t2v, dim=1), torch.cat(v2t, dim=1)  # (B_t, B_v) each


def token_max_sim(
    text: torch.Tensor,
    text_mask: torch.Tensor,
    video: torch.Tensor,
    video_mask: torch.Tensor,
    text_weights: torch.Tensor | None = None,
    video_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-to-video and video-to-text max-similarity scores, each (B_t, B_v), float32; see the module docstring.

    Args:
        text: (B_t, L_t, D) text token features.
        text_mask: (B_t, L_t) bool, True for real tokens.
        video: (B_v, L_v, D) video token features (frames or patches).
        video_mask: (B_v, L_v) bool.
        text_weights: optional (B_t, L_t) token weights ``w`` (e.g. a softmax over tokens); default uniform.
        video_weights: optional (B_v, L_v) token weights ``u``; default uniform.

    Raises:
        ValueError: shapes that do not match, naming the argument.
    """
    return token_max_sim_reference(text, text_mask, video, video_mask, text_weights, video_weights)
