"""PCKD cost: one training step (student + frozen teacher on 4 rotated views, every loss term, backward, SGD)
against vanilla KD and CRD (un-rotated view only; CRD with a CIFAR-100-sized memory of 50,000 images and 16,384
negatives per image), and student inference.

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
    train_labels = torch.arange(50_000) % 100  # CRD's memory: one row per CIFAR-100 training image
    index = torch.randperm(50_000, generator=g)[:batch].to(device)  # the batch's rows
    label = train_labels[index.cpu()].to(device)
    weights = {"kd": dict(w_ce=0.1, w_kd=0.9), "crd": dict(w_ce=1.0, w_kd=0.0, w_crd=0.8), "pckd": {}}
    for method, kw in weights.items():
        cfg = PCKDConfig(student_arch=student, teacher_arch=teacher, num_classes=100)
        module = PCKDModule(cfg, method=method, teacher_random_init=True, **kw).to(device).train()
        if method == "crd":
            module.init_crd_memory(train_labels)
        opt = module.configure_optimizers()["optimizer"]

        def step(module=module, opt=opt) -> None:
            out = module.compute_losses(image, label, epoch=1, index=index)
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
