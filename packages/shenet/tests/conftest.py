"""Fixtures shared by the shenet tests."""

import math

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture
def plain_attention(monkeypatch):
    """Attention computed by its formula, softmax(QKᵀ/√d + mask)·V, in every nn.MultiheadAttention (fast path off).

    A query row whose keys are all masked is then NaN, as some attention kernels make it; torch's CPU kernel returns
    zeros for it instead, which would hide a fully masked row from the tests."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        assert not is_causal and dropout_p == 0.0 and not kwargs
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., L_q, L_k)
        if attn_mask is not None:
            logits = logits + attn_mask
        return torch.softmax(logits, -1) @ v

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(fastpath)
