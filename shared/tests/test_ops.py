"""token_max_sim: the reference against a plain loop, and the Triton kernel against the reference
(under TRITON_INTERPRET=1 on CPU, natively on CUDA)."""

from types import SimpleNamespace

import pytest
import torch

from mmzoo.ops import HAS_TRITON, token_max_sim, token_max_sim_reference, triton_pays_off
from mmzoo.testing import run_in_triton_interpreter


def loop_reference(t, tm, v, vm, w=None, u=None):
    """The equations of the module docstring, one pair and one token at a time."""
    bt, bv = t.shape[0], v.shape[0]
    t2v, v2t = torch.zeros(bt, bv, dtype=torch.float64), torch.zeros(bt, bv, dtype=torch.float64)
    for i in range(bt):
        li = [l for l in range(t.shape[1]) if tm[i, l]]
        for j in range(bv):
            mj = [m for m in range(v.shape[1]) if vm[j, m]]
            if not li or not mj:
                continue
            for l in li:
                wl = w[i, l] if w is not None else 1.0 / len(li)
                t2v[i, j] += wl * max(float(t[i, l] @ v[j, m]) for m in mj)
            for m in mj:
                um = u[j, m] if u is not None else 1.0 / len(mj)
                v2t[i, j] += um * max(float(t[i, l] @ v[j, m]) for l in li)
    return t2v, v2t


def make_inputs(bt=3, lt=5, bv=4, lv=7, d=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(bt, lt, d, generator=g).to(dtype)
    v = torch.randn(bv, lv, d, generator=g).to(dtype)
    tm = torch.ones(bt, lt, dtype=torch.bool)
    tm[0, 3:] = False
    vm = torch.ones(bv, lv, dtype=torch.bool)
    vm[1, 2:] = False
    vm[bv - 1] = False  # a video with no valid token scores 0
    w = torch.rand(bt, lt, generator=g)
    u = torch.rand(bv, lv, generator=g)
    return t, tm, v, vm, w, u


def test_reference_matches_loop_uniform_and_weighted():
    t, tm, v, vm, w, u = make_inputs()
    for ww, uu in ((None, None), (w, u)):
        a, b = token_max_sim_reference(t, tm, v, vm, ww, uu, chunk_size=3)
        ea, eb = loop_reference(t, tm, v, vm, ww, uu)
        torch.testing.assert_close(a.double(), ea, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.double(), eb, rtol=1e-5, atol=1e-5)
    assert torch.all(a[:, -1] == 0) and torch.all(b[:, -1] == 0)


def test_hand_worked_case():
    # one text (tokens e1, e2), one video (tokens e1, 2·e2, -e1): maxes per text token 1 and 2 → mean 1.5;
    # per video token 1, 2, 0 (max over text tokens of ⟨-e1, e1⟩=-1 and ⟨-e1, e2⟩=0) → mean 1.
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    v = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]])
    a, b = token_max_sim(t, torch.ones(1, 2, dtype=torch.bool), v, torch.ones(1, 3, dtype=torch.bool))
    assert a.item() == pytest.approx(1.5) and b.item() == pytest.approx(1.0)


def test_shape_errors_name_the_argument():
    t, tm, v, vm, w, u = make_inputs()
    with pytest.raises(ValueError, match="video_mask"):
        token_max_sim(t, tm, v, vm[:, :3])
    with pytest.raises(ValueError, match="feature sizes differ"):
        token_max_sim(t, tm, v[..., :3], vm)


def test_reference_gradients_match_dense_autograd():
    t, tm, v, vm, w, u = make_inputs(seed=1)
    t.requires_grad_()
    v.requires_grad_()
    a, b = token_max_sim_reference(t, tm, v, vm, chunk_size=2)
    ga = torch.autograd.grad(a.sum() + 2 * b.sum(), [t, v])
    t2, v2 = t.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
    a2, b2 = token_max_sim_reference(t2, tm, v2, vm, chunk_size=100)
    gb = torch.autograd.grad(a2.sum() + 2 * b2.sum(), [t2, v2])
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)


def check_kernel_against_reference(shape, device):
    """Values and all four gradients of the Triton path against the reference."""
    from mmzoo.ops.maxsim import token_max_sim_triton

    bt, lt, bv, lv, d = shape
    t, tm, v, vm, w, u = (x.to(device) for x in make_inputs(bt, lt, bv, lv, d, seed=2))
    inputs = [t.requires_grad_(), v.requires_grad_(), w.requires_grad_(), u.requires_grad_()]
    g = torch.Generator().manual_seed(3)
    g1, g2 = torch.randn(bt, bv, generator=g).to(device), torch.randn(bt, bv, generator=g).to(device)
    a, b = token_max_sim_triton(t, tm, v, vm, w, u)
    ar, br = token_max_sim_reference(t, tm, v, vm, w, u)
    tol = {"rtol": 1e-4, "atol": 1e-4}  # float32 with IEEE products on both paths
    torch.testing.assert_close(a, ar, **tol)
    torch.testing.assert_close(b, br, **tol)
    gk = torch.autograd.grad((a * g1).sum() + (b * g2).sum(), inputs)
    gr = torch.autograd.grad((ar * g1).sum() + (br * g2).sum(), inputs)
    for name, x, y in zip("tvwu", gk, gr):
        torch.testing.assert_close(x, y, **tol, msg=lambda m, n=name: f"grad {n}: {m}")
    with torch.no_grad():  # the inference path saves nothing and gives the same values
        a0, b0 = token_max_sim_triton(t, tm, v, vm, w, u)
    torch.testing.assert_close(a0, a)
    torch.testing.assert_close(b0, b)


SHAPES = [(3, 5, 4, 37, 40), (2, 17, 3, 33, 70)]  # none a multiple of the block sizes (16/32/64)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_kernel_matches_reference_values_and_gradients():
    if torch.cuda.is_available():
        for shape in SHAPES:
            check_kernel_against_reference(shape, "cuda")
        return
    # The interpreter must be chosen before triton is first imported, hence a fresh process.
    out = run_in_triton_interpreter(
        __file__, "[test_ops.check_kernel_against_reference(s, 'cpu') for s in test_ops.SHAPES]; print('kernel ok')"
    )
    assert "kernel ok" in out


def test_kernel_is_taken_only_for_half_precision_inference():
    """The dispatch rule of token_max_sim (measured: the kernel wins only in bf16/fp16 without a backward pass)."""

    def fake(dtype, cuda=True, grad=False):  # only the attributes the rule reads; no GPU needed
        return SimpleNamespace(is_cuda=cuda, dtype=dtype, requires_grad=grad)

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    assert triton_pays_off(fake(bf16), fake(bf16))
    assert triton_pays_off(fake(fp16), fake(fp16), None, None)
    assert not triton_pays_off(fake(fp16), fake(bf16))  # mixed half dtypes: the kernel would need float32
    assert not triton_pays_off(fake(fp32), fake(fp32))  # exact float32 products: slower than cuBLAS
    assert not triton_pays_off(fake(bf16), fake(fp32))
    assert not triton_pays_off(fake(bf16, cuda=False), fake(bf16, cuda=False))
    assert not triton_pays_off(fake(bf16, grad=True), fake(bf16))  # training: the reference's backward is faster
    assert not triton_pays_off(fake(bf16), fake(bf16), None, fake(fp32, grad=True))  # a weight needing a gradient
    with torch.no_grad():
        assert triton_pays_off(fake(bf16, grad=True), fake(bf16))
    t, tm, v, vm, w, u = make_inputs()
    assert not triton_pays_off(t, v, w, u)  # real CPU tensors: the reference


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_stays_float32_under_autocast(dtype):
    """Autocast would turn the einsum into a half-precision matmul (and -1e30 overflows fp16)."""
    t, tm, v, vm, w, u = make_inputs(bt=4, lt=8, bv=5, lv=12, d=64, seed=4)
    a32, b32 = token_max_sim_reference(t, tm, v, vm, w, u)
    t.requires_grad_()
    try:
        with torch.autocast("cpu", dtype=dtype):
            a, b = token_max_sim_reference(t, tm, v, vm, w, u, chunk_size=2)
    except RuntimeError as err:
        if "autocast" in str(err).lower():
            pytest.skip(f"CPU autocast with {dtype} is not supported by this torch build: {err}")
        raise
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, a32, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, b32, rtol=1e-5, atol=1e-5)
    # the checkpointed backward recomputes under the same rule
    (ga,) = torch.autograd.grad(a.sum() + b.sum(), t)
    t2 = t.detach().clone().requires_grad_()
    a2, b2 = token_max_sim_reference(t2, tm, v, vm, w, u, chunk_size=2)
    (g2,) = torch.autograd.grad(a2.sum() + b2.sum(), t2)
    torch.testing.assert_close(ga, g2, rtol=1e-5, atol=1e-5)


def test_reference_takes_half_precision_inputs():
    t, tm, v, vm, w, u = make_inputs(seed=5)
    for dtype in (torch.bfloat16, torch.float16):
        th, vh = t.to(dtype), v.to(dtype)
        a, b = token_max_sim_reference(th, tm, vh, vm, w, u)  # products of the half values, in float32
        ea, eb = loop_reference(th.double(), tm, vh.double(), vm, w, u)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), ea, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.double(), eb, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_token_max_sim_takes_the_kernel_in_half_precision_on_cuda(dtype, monkeypatch):
    """The configuration token_max_sim actually sends to the kernel: CUDA, one half dtype, no gradient."""
    import mmzoo.ops.maxsim as maxsim

    calls = []
    kernel = maxsim.token_max_sim_triton
    monkeypatch.setattr(maxsim, "token_max_sim_triton", lambda *a: calls.append(1) or kernel(*a))
    for shape in SHAPES:
        t, tm, v, vm, w, u = (x.cuda() for x in make_inputs(*shape, seed=6))
        t, v = t.to(dtype), v.to(dtype)
        with torch.no_grad():
            a, b = maxsim.token_max_sim(t, tm, v, vm, w, u)
        ar, br = token_max_sim_reference(t.float(), tm, v.float(), vm, w, u)  # the same half values, float32
        torch.testing.assert_close(a, ar, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(b, br, rtol=1e-3, atol=1e-3)
    assert len(calls) == len(SHAPES)
    # mixed half dtypes stay on the reference; called directly, the kernel promotes them to float32
    t, tm, v, vm, w, u = (x.cuda() for x in make_inputs(seed=7))
    ar, br = token_max_sim_reference(t.half().float(), tm, v.bfloat16().float(), vm, w, u)
    a, b = kernel(t.half(), tm, v.bfloat16(), vm, w, u)
    torch.testing.assert_close(a, ar, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b, br, rtol=1e-4, atol=1e-4)
