"""asdmllm benchmark: train step (SFT + SFLoss), Skew probe scoring (yes/no scorer), Skew table and resampling.

CPU: the tiny random LLaVA of the tests. CUDA: a randomly initialised LLaVA-1.5-7B (CLIP ViT-L/14-336 + 7B LLaMA, bf16,
built from configs, no weights) with LoRA (the one-GPU recipe), 576 visual tokens per image.
Run: ``uv run --no-sync python benchmarks/asdmllm.py [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python benchmarks/asdmllm.py` puts benchmarks/ first on sys.path, where this file would shadow the asdmllm package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from asdmllm.losses import SocialFairnessLoss  # noqa: E402
from asdmllm.metrics import skew_table  # noqa: E402
from asdmllm.models import MLLMConfig, MultimodalLLM  # noqa: E402
from asdmllm.sampling import bias_aware_resample  # noqa: E402
from mmzoo.bench import emit, measure, pick_device  # noqa: E402

INSTRUCTION = "What is the occupation of the person in the image?"


def paper_size_llava(mllm: MultimodalLLM, device: torch.device) -> None:
    """Swap the tiny model for a random LLaVA-1.5-7B (bf16, LoRA on the LLM); token ids stay < the char vocabulary."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        ),
        text_config=LlamaConfig(
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
        ),
        image_token_id=mllm.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    model.requires_grad_(False)
    lora = LoraConfig(
        r=128,
        lora_alpha=256,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model.model.language_model = inject_adapter_in_model(lora, model.model.language_model)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
    model.gradient_checkpointing_enable()
    mllm.model = model
    mllm.image_size, mllm.num_image_tokens = 336, 576
    mllm.to(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    mllm = MultimodalLLM(MLLMConfig())
    if device.type == "cuda":
        paper_size_llava(mllm, device)
        batch, probe_batch, iters = 4, 16, 5
    else:
        mllm.to(device)
        batch, probe_batch, iters = 8, 16, 5
    size = mllm.image_size
    loss_fn = SocialFairnessLoss(True)
    params = [p for p in mllm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    images = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8, device=device)
    inputs = mllm.build_inputs([INSTRUCTION] * batch, ["plumber"] * batch)
    skew = torch.linspace(-1, 1, batch, device=device)

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = mllm(images, inputs["input_ids"], inputs["attention_mask"])
        loss = loss_fn(logits, inputs["labels"], skew)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    emit(
        {
            "bench": "asdmllm",
            "case": "train_step_sfloss" + ("_llava7b_lora" if device.type == "cuda" else "_tiny"),
            "batch": batch,
            **measure(train_step, batch, device, warmup=2, iters=iters),
        }
    )

    probe_images = torch.randint(0, 255, (probe_batch, 3, size, size), dtype=torch.uint8, device=device)
    concepts = [["plumber"]] * probe_batch

    @torch.no_grad()
    def probe():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            mllm.yes_no_scores(probe_images, concepts)

    emit(
        {
            "bench": "asdmllm",
            "case": "skew_probe_yes_prob" + ("_llava7b" if device.type == "cuda" else "_tiny"),
            "batch": probe_batch,
            **measure(probe, probe_batch, device, warmup=2, iters=iters),
        }
    )

    n = 20000  # SocialCounterfactuals race-gender scale: ~160 occupations × ~12 images × sets
    g = torch.Generator().manual_seed(0)
    scores = torch.full((n, 160), float("nan"))
    concept = torch.randint(0, 160, (n,), generator=g)
    scores[torch.arange(n), concept] = torch.rand(n, generator=g)
    attrs = torch.stack([torch.randint(0, 6, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)], -1)
    cpu = torch.device("cpu")
    emit(
        {
            "bench": "asdmllm",
            "case": "skew_table_topk_cpu",
            "batch": n,
            **measure(lambda: skew_table(scores, attrs, concept, [6, 2], [0] * 160), n, cpu, warmup=1, iters=3),
        }
    )
    per_sample = torch.randn(n, generator=g).clamp(-3, 3)
    emit(
        {
            "bench": "asdmllm",
            "case": "bias_aware_resample_cpu",
            "batch": n,
            **measure(
                lambda: bias_aware_resample(per_sample, 1.0, 1.0, torch.Generator().manual_seed(0)),
                n,
                cpu,
                warmup=1,
                iters=3,
            ),
        }
    )


if __name__ == "__main__":
    main()
