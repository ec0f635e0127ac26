"""PCKD cost: one training step (student + frozen teacher on 4 rotated views, every loss term, backward, SGD)
against vanilla KD (un-rotated view only), and student inference.

On CUDA: resnet32x4 → resnet8x4, batch 64 images (256 network inputs for PCKD), 32×32, fp32 (the paper's
setting, spec §3.9). On CPU: resnet8 → resnet8, batch 8 images, so it finishes in well under 2 minutes.

    python benchmarks/pckd.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python benchmarks/pckd.py` puts benchmarks/ first on sys.path, where this file would shadow the pckd package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from mmzoo.bench import emit, measure, pick_device  # noqa: E402
from pckd.models import PCKDConfig  # noqa: E402
from pckd.module import PCKDModule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=None)
    a = p.parse_args()
    device = pick_device(a.device)
    cuda = device.type == "cuda"
    teacher, student = ("resnet32x4", "resnet8x4") if cuda else ("resnet8", "resnet8")
    batch = 64 if cuda else 8
    iters, warmup = (20, 5) if cuda else (3, 1)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 4, 3, 32, 32, generator=g).to(device)
    label = torch.randint(0, 100, (batch,), generator=g).to(device)
    for method in ("kd", "pckd"):
        cfg = PCKDConfig(student_arch=student, teacher_arch=teacher, num_classes=100)
        kw = dict(w_ce=0.1, w_kd=0.9) if method == "kd" else {}
        module = PCKDModule(cfg, method=method, teacher_random_init=True, **kw).to(device).train()
        opt = module.configure_optimizers()["optimizer"]

        def step(module=module, opt=opt) -> None:
            out = module.compute_losses(image, label, epoch=1)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()

        emit(
            {
                "bench": "pckd",
                "case": f"train_step_{method}",
                "teacher": teacher,
                "student": student,
                "batch": batch,
                "views": 4 if method == "pckd" else 1,
                **measure(step, batch, device, warmup=warmup, iters=iters),
            }
        )
    module.eval()

    @torch.no_grad()
    def infer() -> None:
        module(image[:, 0])

    emit(
        {
            "bench": "pckd",
            "case": "inference_student",
            "student": student,
            "batch": batch,
            **measure(infer, batch, device, warmup=warmup, iters=iters),
        }
    )


if __name__ == "__main__":
    main()
