import math

import pytest
import torch

from asdmllm.cli import main
from asdmllm.data import SocialCounterfactualsDataset, collate, make_socialcounterfactuals
from asdmllm.module import ASDModule, DebiasConfig


def test_fit_validate_test_tiny(tmp_path):
    data = str(tmp_path / "data")
    common = ["--config", "tiny", "--data.data_root", data, "--trainer.default_root_dir", str(tmp_path)]
    cli = main(args=["fit", *common])
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])) and "val/bias/socialcounterfactuals/max_skew" in metrics
    sampler = cli.datamodule.train_sampler
    assert sampler.indices is not None  # ASD installed a resampled list
    assert cli.model.sample_skew is not None and cli.model.sample_skew.shape == (len(cli.datamodule.train_set),)
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    cli = main(args=["test", *common, "--ckpt_path", ckpt])
    m = cli.trainer.callback_metrics
    for key in (
        "test/bias/socialcounterfactuals/race/max_skew",
        "test/bias/socialcounterfactuals/min_skew",
        "test/bias/fairface/max_skew",
        "test/concept_acc",
    ):
        assert key in m and math.isfinite(float(m[key])), key
    assert (
        float(m["test/bias/socialcounterfactuals/max_skew"])
        >= 0
        >= float(m["test/bias/socialcounterfactuals/min_skew"])
    )
    assert "val/loss" in metrics and "test/loss" in m


def test_loss_falls_on_repeated_batch(tmp_path):
    torch.manual_seed(0)
    root = make_socialcounterfactuals(tmp_path, ["nurse", "chef"], ["White", "Black"], ["male", "female"], 4, 32)
    ds = SocialCounterfactualsDataset(root, "all", image_size=32)
    batch = collate([ds[i] for i in range(8)])
    module = ASDModule(debias=DebiasConfig("ft"))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    skew = torch.linspace(-1, 1, 8)
    module.loss_fn.enabled = True  # SFLoss path with fixed Skew
    losses = []
    for _ in range(8):
        inputs = module.mllm.build_inputs(batch["instruction"], batch["answer"])
        logits = module.mllm(batch["image"], inputs["input_ids"], inputs["attention_mask"])
        loss = module.loss_fn(logits, inputs["labels"], skew)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]


def test_vision_tower_frozen_and_lora():
    from asdmllm.models import MLLMConfig, MultimodalLLM

    m = MultimodalLLM(MLLMConfig())
    assert not any(p.requires_grad for p in m.model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in m.model.model.multi_modal_projector.parameters())
    lora = MultimodalLLM(MLLMConfig(lora=True, lora_r=2))
    names = [n for n, p in lora.model.model.language_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_missing_pretrained_names_key(tmp_path):
    from asdmllm.models import MLLMConfig, MultimodalLLM

    with pytest.raises(FileNotFoundError, match="model.mllm.pretrained"):
        MultimodalLLM(MLLMConfig(pretrained=str(tmp_path / "llava-missing")))


def test_general_eval_hook_vqa_and_mc(tmp_path):
    import json

    from PIL import Image

    from asdmllm.module import GeneralEvalConfig

    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "a.png")
    lines = [
        {"image": "a.png", "question": "Color?", "answers": ["red"] * 10},
        {"image": "a.png", "question": "Color?", "options": {"A": "red", "B": "blue"}, "answer": "A"},
    ]
    (tmp_path / "general.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    module = ASDModule(general_eval=GeneralEvalConfig(file=str(tmp_path / "general.jsonl"), max_new_tokens=3))
    out = module.evaluate_general()
    assert set(out) == {"vqa_acc", "mc_acc"} and all(0.0 <= v <= 100.0 for v in out.values())
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png", "question": "?"}))
    module.general_eval.file = str(tmp_path / "bad.jsonl")
    with pytest.raises(KeyError, match="answers"):
        module.evaluate_general()
