"""RTQ benchmark: retrieval train step, video encoding (inference) and the k-medoids Refine op (PyTorch reference
and, on CUDA, the Triton path of ``rtqvl.ops``).

One JSON line per case (mmzoo.bench). Paper size on CUDA (ViT-B/16 + BERT-base, 12→6 frames, 224 px, batch 8 per
GPU); a tiny model on CPU (finishes in well under 2 minutes). Random weights: speed does not depend on them.
Run: ``python benchmarks/rtqvl.py [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import tempfile
from pathlib import Path

# run as `python benchmarks/rtqvl.py`, this file's folder comes first on sys.path and its name would shadow the
# installed `rtqvl` package: drop that folder before importing it
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from mmzoo.bench import emit, measure, pick_device  # noqa: E402
from rtqvl.models import TINY_TEXT, TINY_VISION, RTQConfig, TextConfig, VisionConfig, kmedoids  # noqa: E402
from rtqvl.models.video import kmedoids_from_distances  # noqa: E402
from rtqvl.module import RTQModule  # noqa: E402
from rtqvl.ops import HAS_TRITON, kmedoids_triton, pairwise_distance_triton  # noqa: E402


def _vocab_dir(tmp: str) -> str:
    """A bert-base-sized vocabulary (30522 entries) so the text embeddings have the paper's size."""
    base = (importlib.resources.files("rtqvl.models") / "tiny_vocab.txt").read_text().split()
    words = base + [f"w{i}" for i in range(30522 - len(base))]
    Path(tmp, "vocab.txt").write_text("\n".join(words) + "\n")
    return tmp


def _config(paper: bool, tmp: str) -> tuple[RTQConfig, int, int]:
    if paper:
        cfg = RTQConfig(
            task="retrieval",
            vision=VisionConfig(grad_checkpoint_last=4),
            text=TextConfig(vocab_path=_vocab_dir(tmp)),
            queue_size=14400,
        )
        return cfg, 8, 224
    vision = VisionConfig(**TINY_VISION)
    text = TextConfig(**TINY_TEXT)
    return RTQConfig(task="retrieval", vision=vision, text=text, embed_dim=32, queue_size=64, max_text_len=16), 8, 32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default=None)
    a = p.parse_args()
    device = pick_device(a.device)
    paper = device.type == "cuda"
    size = "paper" if paper else "tiny"
    with tempfile.TemporaryDirectory() as tmp:
        cfg, b, px = _config(paper, tmp)
        module = RTQModule(cfg, lr=1e-5).to(device)
        module.log = lambda *args, **kw: None
        opt = torch.optim.AdamW([q for q in module.parameters() if q.requires_grad], lr=1e-5)
        t = cfg.vision.num_frames
        batch = {
            "video": torch.randn(b, t, 3, px, px, device=device),
            "caption": ["a man is cooking a large pizza in a kitchen"] * b,
            "video_index": torch.arange(b, device=device),
        }
        amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=paper)

        def train_step():
            with amp:
                loss = module.training_step(batch, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        emit(
            {
                "bench": "rtqvl",
                "case": f"retrieval_train_step_{size}",
                "batch": b,
                **measure(train_step, b, device, warmup=2, iters=5 if paper else 3),
            }
        )

        def encode():
            with torch.no_grad(), amp:
                module.model.encode_video(batch["video"])

        module.eval()
        emit(
            {
                "bench": "rtqvl",
                "case": f"video_encode_{size}",
                "batch": b,
                **measure(encode, b, device, warmup=2, iters=5 if paper else 3),
            }
        )
        # Refine alone: B·T' segments of N = d·P tokens → C medoids
        s, n, d = (
            b * cfg.vision.num_segments,
            cfg.vision.frames_per_segment * cfg.vision.num_patches,
            cfg.vision.hidden_size,
        )
        z = torch.randn(s, n, d, device=device)
        c = cfg.vision.num_patches
        emit(
            {
                "bench": "rtqvl",
                "case": f"kmedoids_torch_{size}",
                "batch": s,
                **measure(lambda: kmedoids(z, c), s, device, warmup=1, iters=5 if paper else 3),
            }
        )
        if device.type == "cuda" and HAS_TRITON:  # the Triton kernels need CUDA (the CPU interpreter is for tests)
            got = kmedoids_triton(z, c)
            # torch.cdist's float32 distances differ from the kernel's in the last bits, which can flip near-ties;
            # on the kernel's own distances the reference iteration must give exactly the kernel's medoids
            on_own = kmedoids_from_distances(pairwise_distance_triton(z), z.norm(dim=-1), c)
            emit(
                {
                    "bench": "rtqvl",
                    "case": f"kmedoids_triton_{size}",
                    "batch": s,
                    "segments_same_as_torch": round((got == kmedoids(z, c)).all(dim=1).float().mean().item(), 4),
                    "same_as_torch_on_kernel_distances": bool(torch.equal(got, on_own)),
                    **measure(lambda: kmedoids_triton(z, c), s, device, warmup=1, iters=5),
                }
            )


if __name__ == "__main__":
    main()
