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
works in tiles. :func:`token_max_sim` takes the kernel only where it was measured to be faster
(:func:`triton_pays_off`: CUDA, text and video both bf16 or both fp16, no gradient).
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["HAS_TRITON", "token_max_sim", "token_max_sim_reference", "token_max_sim_triton", "triton_pays_off"]

#: Triton ships with CUDA builds of torch on Linux; it is imported only when the kernel is first used.
HAS_TRITON = importlib.util.find_spec("triton") is not None

_NEG = -1e30


def _check(t: torch.Tensor, tm: torch.Tensor, v: torch.Tensor, vm: torch.Tensor, w, u) -> None:
    if t.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"token_max_sim: text (B_t, L_t, D) and video (B_v, L_v, D) expected, got {tuple(t.shape)} and {tuple(v.shape)}"
        )
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


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will ask for gradients of any of ``tensors``."""
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


def _chunk_scores(t, tm, w, v, vm, u):
    """Scores of all texts against one chunk of videos, in float32 even under autocast (which would otherwise
    run the einsum in half precision). Shapes: t (B_t, L_t, D), v (C, L_v, D)."""
    with torch.autocast(device_type=t.device.type, enabled=False):
        return _chunk_scores_fp32(t.float(), tm, w.float(), v.float(), vm, u.float())


def _chunk_scores_fp32(t, tm, w, v, vm, u):
    sim = torch.einsum("ild,jmd->ijlm", t, v)  # (B_t, C, L_t, L_v)
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
    """Plain-PyTorch reference of :func:`token_max_sim`: chunks of ``chunk_size`` videos, each chunk recomputed
    in backward so peak memory is O(B_t · chunk · L_t · L_v). Products and sums are float32 whatever the input
    dtype, with autocast switched off inside."""
    _check(text, text_mask, video, video_mask, text_weights, video_weights)
    tm, vm = text_mask.bool(), video_mask.bool()
    w, u = _weights(tm, text_weights), _weights(vm, video_weights)
    t2v, v2t = [], []
    needs_grad = _needs_grad(text, video, text_weights, video_weights)
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
    if HAS_TRITON and triton_pays_off(text, video, text_weights, video_weights):
        return token_max_sim_triton(text, text_mask, video, video_mask, text_weights, video_weights)
    return token_max_sim_reference(text, text_mask, video, video_mask, text_weights, video_weights)


def triton_pays_off(text: torch.Tensor, video: torch.Tensor, *weights: torch.Tensor | None) -> bool:
    """Whether :func:`token_max_sim` takes the Triton kernel: CUDA, text and video both bf16 (or both fp16),
    and no gradient.

    Measured on an H100 (``benchmarks/ops.py``, shared/README.md): in bf16 evaluation the kernel is 1.6-4× faster
    than the reference and needs a tenth of its memory; in float32 its exact (non-TF32) products make it 4-9×
    slower than the reference's cuBLAS matmuls, and a training step (forward + backward) is about 2× slower in
    either precision. Both paths compute the same function; ``token_max_sim_triton`` can still be called directly.
    """
    if not (text.is_cuda and video.is_cuda):
        return False
    if text.dtype != video.dtype or text.dtype not in (torch.bfloat16, torch.float16):
        return False  # float32, or a bf16/fp16 mix (which the kernel would have to run in float32)
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (text, video, *weights))
    return not needs_grad


# ----------------------------------------------------------------------------------------------- Triton path


@functools.cache
def _forward_kernel():
    """Build the Triton kernel on first use (``TRITON_INTERPRET=1`` must be set before, to run it on CPU)."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        T,
        V,
        TM,
        VM,
        W,
        U,  # inputs: (B_t, L_t, D), (B_v, L_v, D), masks int8, weights float32
        T2V,
        V2T,  # outputs (B_t, B_v) float32
        ROWMAX,
        ROWARG,
        COLMAX,
        COLARG,  # saved for backward: (B_t, B_v, L_t) and (B_t, B_v, L_v)
        B_v,
        L_t,
        L_v,
        D,
        s_tb,
        s_tl,
        s_td,
        s_vb,
        s_vl,
        s_vd,
        BLOCK_L: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
        SAVE: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        # One program scores text i against video j: a (BLOCK_L × BLOCK_M) tile of similarities at a time.
        i = tl.program_id(0)
        j = tl.program_id(1)
        offs_l = tl.arange(0, BLOCK_L)
        offs_d = tl.arange(0, BLOCK_D)
        l_in = offs_l < L_t
        t_ok = tl.load(TM + i * L_t + offs_l, mask=l_in, other=0) != 0
        w = tl.load(W + i * L_t + offs_l, mask=l_in, other=0.0)
        run_max = tl.full([BLOCK_L], -1e30, tl.float32)
        run_arg = tl.zeros([BLOCK_L], tl.int32)
        v2t = tl.zeros([BLOCK_M], tl.float32)
        pair = i * B_v + j
        for m0 in range(0, L_v, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            m_in = offs_m < L_v
            v_ok = tl.load(VM + j * L_v + offs_m, mask=m_in, other=0) != 0
            acc = tl.zeros([BLOCK_L, BLOCK_M], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d_in = (d0 + offs_d) < D
                t_blk = tl.load(
                    T + i * s_tb + offs_l[:, None] * s_tl + (d0 + offs_d)[None, :] * s_td,
                    mask=l_in[:, None] & d_in[None, :],
                    other=0.0,
                )
                v_blk = tl.load(
                    V + j * s_vb + offs_m[:, None] * s_vl + (d0 + offs_d)[None, :] * s_vd,
                    mask=m_in[:, None] & d_in[None, :],
                    other=0.0,
                )
                if IEEE:
                    acc += tl.dot(t_blk, tl.trans(v_blk), input_precision="ieee")
                else:
                    acc += tl.dot(t_blk, tl.trans(v_blk))
            acc = tl.where(t_ok[:, None] & v_ok[None, :], acc, -1e30)
            blk_max = tl.max(acc, axis=1)
            blk_arg = tl.argmax(acc, axis=1).to(tl.int32) + m0
            better = blk_max > run_max
            run_arg = tl.where(better, blk_arg, run_arg)
            run_max = tl.where(better, blk_max, run_max)
            col_max = tl.max(acc, axis=0)
            col_ok = col_max > -5e29
            u = tl.load(U + j * L_v + offs_m, mask=m_in, other=0.0)
            col_val = tl.where(col_ok, col_max, 0.0)
            v2t += col_val * u
            if SAVE:
                col_arg = tl.where(col_ok, tl.argmax(acc, axis=0).to(tl.int32), -1)
                tl.store(COLMAX + pair * L_v + offs_m, col_val, mask=m_in)
                tl.store(COLARG + pair * L_v + offs_m, col_arg, mask=m_in)
        row_ok = run_max > -5e29
        row_val = tl.where(row_ok, run_max, 0.0)
        tl.store(T2V + pair, tl.sum(row_val * w, axis=0))
        tl.store(V2T + pair, tl.sum(v2t, axis=0))
        if SAVE:
            tl.store(ROWMAX + pair * L_t + offs_l, row_val, mask=l_in)
            tl.store(ROWARG + pair * L_t + offs_l, tl.where(row_ok, run_arg, -1), mask=l_in)

    return kernel


def _next_pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (max(1, n) - 1).bit_length())


def _pair_budget(rows: int, cols: int, length: int, dim: int, budget: int = 1 << 24) -> tuple[int, int]:
    """Chunk sizes (rows, cols) so that a (rows, cols, length, dim) temporary stays under ``budget`` elements."""
    per_pair = max(1, length * dim)
    cols_c = max(1, min(cols, budget // per_pair))
    rows_c = max(1, min(rows, budget // (per_pair * cols_c)))
    return rows_c, cols_c


class _TokenMaxSimTriton(torch.autograd.Function):
    """Triton forward; backward in PyTorch from the saved arg-max indices, chunked to bound memory."""

    @staticmethod
    def forward(ctx, t, tm, v, vm, w, u, save: bool):  # type: ignore[override]
        b_t, l_t, d = t.shape
        b_v, l_v, _ = v.shape
        t2v = torch.empty(b_t, b_v, device=t.device, dtype=torch.float32)
        v2t = torch.empty_like(t2v)
        if save:
            rowmax = torch.empty(b_t, b_v, l_t, device=t.device, dtype=torch.float32)
            rowarg = torch.empty(b_t, b_v, l_t, device=t.device, dtype=torch.int32)
            colmax = torch.empty(b_t, b_v, l_v, device=t.device, dtype=torch.float32)
            colarg = torch.empty(b_t, b_v, l_v, device=t.device, dtype=torch.int32)
        else:
            rowmax = rowarg = colmax = colarg = t2v  # never written when SAVE is False
        _forward_kernel()[(b_t, b_v)](
            t,
            v,
            tm,
            vm,
            w,
            u,
            t2v,
            v2t,
            rowmax,
            rowarg,
            colmax,
            colarg,
            b_v,
            l_t,
            l_v,
            d,
            t.stride(0),
            t.stride(1),
            t.stride(2),
            v.stride(0),
            v.stride(1),
            v.stride(2),
            BLOCK_L=_next_pow2(l_t),
            BLOCK_M=32,
            BLOCK_D=min(64, _next_pow2(d)),
            SAVE=save,
            IEEE=t.dtype == torch.float32,
        )
        if save:
            ctx.save_for_backward(t, v, w, u, rowmax, rowarg.long(), colmax, colarg.long())
        return t2v, v2t

    @staticmethod
    def backward(ctx, g_t2v, g_v2t):  # type: ignore[override]
        t, v, w, u, rowmax, rowarg, colmax, colarg = ctx.saved_tensors
        b_t, l_t, d = t.shape
        b_v, l_v, _ = v.shape
        tf, vf = t.float(), v.float()
        g1, g2 = g_t2v.float(), g_v2t.float()
        grad_t = torch.zeros_like(tf)
        grad_v = torch.zeros_like(vf)
        grad_w = (g1[:, :, None] * rowmax).sum(1)  # (B_t, L_t): ∂S_t2v/∂w_il = max_m sim
        grad_u = (g2[:, :, None] * colmax).sum(0)  # (B_v, L_v): ∂S_v2t/∂u_jm = max_l sim
        ic, jc = _pair_budget(b_t, b_v, max(l_t, l_v), d)
        for i0 in range(0, b_t, ic):
            ti = tf[i0 : i0 + ic]  # (Ic, L_t, D)
            n_i = ti.shape[0]
            for j0 in range(0, b_v, jc):
                vj = vf[j0 : j0 + jc]  # (Jc, L_v, D)
                n_j = vj.shape[0]
                # text→video: text token l of i picked video token a = rowarg[i, j, l]
                a = rowarg[i0 : i0 + ic, j0 : j0 + jc]  # (Ic, Jc, L_t)
                coef = g1[i0 : i0 + ic, j0 : j0 + jc, None] * w[i0 : i0 + ic, None, :] * (a >= 0)  # (Ic, Jc, L_t)
                a0 = a.clamp_min(0)
                jj = torch.arange(n_j, device=t.device)[None, :, None]
                grad_t[i0 : i0 + ic] += torch.einsum("ijl,ijld->ild", coef, vj[jj, a0])  # vj[jj, a0]: (Ic, Jc, L_t, D)
                src = (coef[..., None] * ti[:, None]).reshape(-1, d)  # (Ic·Jc·L_t, D)
                gv = grad_v[j0 : j0 + jc].view(n_j * l_v, d)
                gv.index_add_(0, (jj * l_v + a0).expand(n_i, n_j, l_t).reshape(-1), src)
                # video→text: video token m of j picked text token b = colarg[i, j, m]
                b = colarg[i0 : i0 + ic, j0 : j0 + jc]  # (Ic, Jc, L_v)
                coef2 = g2[i0 : i0 + ic, j0 : j0 + jc, None] * u[None, j0 : j0 + jc, :] * (b >= 0)  # (Ic, Jc, L_v)
                b0 = b.clamp_min(0)
                ii = torch.arange(n_i, device=t.device)[:, None, None]
                grad_v[j0 : j0 + jc] += torch.einsum("ijm,ijmd->jmd", coef2, ti[ii, b0])  # ti[ii, b0]: (Ic, Jc, L_v, D)
                src2 = (coef2[..., None] * vj[None]).reshape(-1, d)  # (Ic·Jc·L_v, D)
                gt = grad_t[i0 : i0 + ic].view(n_i * l_t, d)
                gt.index_add_(0, (ii * l_t + b0).expand(n_i, n_j, l_v).reshape(-1), src2)
        return grad_t.to(t.dtype), None, grad_v.to(v.dtype), None, grad_w, grad_u, None


def token_max_sim_triton(
    text: torch.Tensor,
    text_mask: torch.Tensor,
    video: torch.Tensor,
    video_mask: torch.Tensor,
    text_weights: torch.Tensor | None = None,
    video_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of :func:`token_max_sim` (CUDA tensors, or CPU under ``TRITON_INTERPRET=1``).

    The forward kernel never forms more than one (L_t-block × 32) similarity tile per program. The backward
    gathers the arg-max tokens saved by the forward (O(B_t·B_v·(L_t+L_v)) memory), in chunks. Text and video
    of different dtypes are both cast to their promoted dtype first (bf16 with fp16 gives float32).
    """
    _check(text, text_mask, video, video_mask, text_weights, video_weights)
    if text.dtype != video.dtype:
        common = torch.promote_types(text.dtype, video.dtype)
        text, video = text.to(common), video.to(common)
    tm, vm = text_mask.bool(), video_mask.bool()
    w = _weights(tm, text_weights).contiguous()
    u = _weights(vm, video_weights).contiguous()
    save = _needs_grad(text, video, text_weights, video_weights)
    return _TokenMaxSimTriton.apply(
        text.contiguous(),
        tm.to(torch.int8).contiguous(),
        video.contiguous(),
        vm.to(torch.int8).contiguous(),
        w,
        u,
        save,
    )
