"""mmzoo.ops.token_max_sim: reference (chunked PyTorch) against the Triton kernel, time and peak memory.

On a GPU: text×video retrieval sizes (1000 texts × 1000 videos, 32 text tokens, 12 frames or 12×50 patches,
D=512), forward only (evaluation) and forward+backward (a training batch of 128×128). On a CPU: the reference
at small sizes only (the kernel needs CUDA). One JSON line per case.

    python benchmarks/ops.py
"""

from __future__ import annotations

import torch
from mmzoo.bench import emit, measure, pick_device
from mmzoo.ops import HAS_TRITON, token_max_sim_reference
from mmzoo.ops.maxsim import token_max_sim_triton


def inputs(bt, lt, bv, lv, d, device, dtype, grad=False):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(bt, lt, d, generator=g).to(device, dtype).requires_grad_(grad)
    v = torch.randn(bv, lv, d, generator=g).to(device, dtype).requires_grad_(grad)
    tm = torch.ones(bt, lt, dtype=torch.bool, device=device)
    tm[:, lt // 2 :] = torch.rand(bt, lt - lt // 2, generator=g).to(device) > 0.5
    vm = torch.ones(bv, lv, dtype=torch.bool, device=device)
    return t, tm, v, vm


def main() -> None:
    device = pick_device()
    if device.type == "cuda":
        cases = [
            ("eval_frames", 1000, 32, 1000, 12, 512, False),
            ("eval_patches", 256, 32, 256, 600, 512, False),
            ("train_frames", 128, 32, 128, 12, 512, True),
        ]
        dtypes = [torch.float32, torch.bfloat16]
    else:
        cases = [("eval_frames", 64, 16, 64, 12, 64, False), ("train_frames", 32, 16, 32, 12, 64, True)]
        dtypes = [torch.float32]
    impls = {"reference": token_max_sim_reference}
    if device.type == "cuda" and HAS_TRITON:
        impls["triton"] = token_max_sim_triton
    for name, bt, lt, bv, lv, d, train in cases:
        for dtype in dtypes:
            for impl_name, impl in impls.items():
                t, tm, v, vm = inputs(bt, lt, bv, lv, d, device, dtype, grad=train)

                def step(impl=impl, t=t, tm=tm, v=v, vm=vm, train=train):
                    if train:
                        a, b = impl(t, tm, v, vm)
                        (a.sum() + b.sum()).backward()
                    else:
                        with torch.no_grad():
                            impl(t, tm, v, vm)

                rec = measure(step, items_per_call=bt * bv, device=device, warmup=2, iters=5)
                emit(
                    {
                        "bench": "ops.token_max_sim",
                        "case": f"{name}_{impl_name}",
                        "dtype": str(dtype).split(".")[-1],
                        "batch": f"{bt}x{bv}",
                        "shape": [bt, lt, bv, lv, d],
                        **rec,
                    }
                )


if __name__ == "__main__":
    main()
