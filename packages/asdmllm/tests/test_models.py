"""Qwen2-VL / Qwen2.5-VL through their native transformers classes (the successors of the paper's Qwen-VL)."""

import math

import pytest
import torch

from asdmllm.models import MLLMConfig, MultimodalLLM, qwen2_vl_patchify

QWEN_TEMPLATE = "<|im_start|>user\n<image>{instruction}<|im_end|>\n<|im_start|>assistant\n"


def test_patchify_matches_transformers_image_processor():
    from transformers import Qwen2VLImageProcessor

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 16, 16)
    processor = Qwen2VLImageProcessor(
        patch_size=4, merge_size=2, temporal_patch_size=2, do_resize=False, do_rescale=False, do_normalize=False
    )
    ref = processor(images=[pixels[0], pixels[1]], return_tensors="pt")
    assert ref["image_grid_thw"].tolist() == [[1, 4, 4]] * 2
    assert torch.allclose(qwen2_vl_patchify(pixels, 4, 2, 2), ref["pixel_values"], atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_tiny_qwen_inputs_scores_and_training_step(arch):
    torch.manual_seed(0)
    m = MultimodalLLM(MLLMConfig(arch=arch, patch_size=4, prompt_template=QWEN_TEMPLATE, answer_prefix=""))
    assert type(m.model).__name__ == {"qwen2_vl": "Qwen2VLForConditionalGeneration"}.get(
        arch, "Qwen2_5_VLForConditionalGeneration"
    )
    assert m.num_image_tokens == (32 // 4 // 2) ** 2
    inputs = m.build_inputs(["Job?", "Which job is it?"], ["nurse", "chef"])
    ids, labels = inputs["input_ids"], inputs["labels"]
    start = m.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    end = m.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    for b, answer in enumerate(["nurse", "chef"]):
        row = ids[b].tolist()
        first = row.index(m.image_token_id)
        assert row[first - 1] == start and row[first + m.num_image_tokens] == end
        assert row.count(m.image_token_id) == m.num_image_tokens
        assert labels[b][labels[b] != -100].tolist() == m._encode(answer) + [m.tokenizer.eos_token_id]
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    logits = m(images, ids, inputs["attention_mask"])
    assert logits.shape == (*ids.shape, len(m.tokenizer))
    from asdmllm.losses import autoregressive_loss

    loss = autoregressive_loss(logits, labels).mean()
    loss.backward()
    visual = m.model.model.visual
    assert all(p.grad is None for n, p in visual.named_parameters() if not n.startswith("merger"))  # frozen
    assert any(p.grad is not None for p in visual.merger.parameters()) and math.isfinite(loss.item())
    with torch.no_grad():
        s = m.yes_no_scores(images, [["nurse", "chef"]] * 2)
        a = m.answer_logprob_scores(images, [["Job?", "Job?"]] * 2, [["nurse", "chef"]] * 2)
    assert s.shape == a.shape == (2, 2) and ((s > 0) & (s < 1)).all() and (a < 0).all()
    assert len(m.generate_answers(images[:1], ["Job?"], max_new_tokens=2)) == 1


def test_qwen_image_size_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MLLMConfig(arch="qwen2_vl", image_size=36, patch_size=4)
    with pytest.raises(FileNotFoundError, match="Qwen/Qwen2-VL-7B-Instruct"):
        MultimodalLLM(MLLMConfig(arch="qwen2_vl", pretrained=str(tmp_path / "missing"), image_size=448, patch_size=14))


def test_remote_code_checkpoints_are_refused_by_name(tmp_path):
    """Bunny / Qwen-VL exist only as trust_remote_code checkpoints: a clear error naming them, no remote code run."""
    import json

    from asdmllm.models import check_native_checkpoint

    cases = {
        "bunny": (
            {"model_type": "bunny-llama", "auto_map": {"AutoModelForCausalLM": "modeling_bunny_llama.X"}},
            "Bunny",
        ),
        "qwenvl": ({"model_type": "qwen", "auto_map": {"AutoModelForCausalLM": "modeling_qwen.X"}}, "Qwen-VL"),
        "other": ({"model_type": "foo", "auto_map": {"AutoModel": "m.X"}}, "auto_map"),
    }
    for name, (cfg, expected) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="trust_remote_code") as err:
            MultimodalLLM(MLLMConfig(pretrained=str(tmp_path / name)))
        assert expected in str(err.value)
    (tmp_path / "qwen2").mkdir()
    (tmp_path / "qwen2" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ValueError, match="set model.mllm.arch"):
        check_native_checkpoint(str(tmp_path / "qwen2"), "llava")
    check_native_checkpoint(str(tmp_path / "qwen2"), "qwen2_vl")  # a native checkpoint of the right arch passes
    check_native_checkpoint(str(tmp_path / "missing"), "llava")  # no local config: left to transformers


def test_local_bf16_checkpoint_loads_its_weights_and_trains_fp32_parts(tmp_path):
    """``model.mllm.pretrained`` = a local transformers snapshot: its weights arrive (not a random init), and with a
    bf16 base (the LoRA config) the trained parts (projector, LoRA) are fp32, since an AdamW step of lr = 2e-5 is below
    half a bf16 ulp of most weights and would be rounded away."""
    import torch
    from transformers import CLIPImageProcessor, LlavaProcessor

    from asdmllm.losses import autoregressive_loss
    from asdmllm.models import IMAGE_TOKEN, build_char_tokenizer, build_tiny_llava

    torch.manual_seed(0)
    tok = build_char_tokenizer()
    source = build_tiny_llava(MLLMConfig(), len(tok), tok.convert_tokens_to_ids(IMAGE_TOKEN), tok.pad_token_id)
    source.save_pretrained(tmp_path / "llava")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default"
    ).save_pretrained(tmp_path / "llava")
    m = MultimodalLLM(MLLMConfig(pretrained=str(tmp_path / "llava"), torch_dtype="bfloat16", lora=True, lora_r=2))
    inner = m.model.model
    expected = source.model.vision_tower.embeddings.patch_embedding.weight.to(torch.bfloat16)
    assert torch.equal(inner.vision_tower.embeddings.patch_embedding.weight, expected)
    assert inner.vision_tower.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    trained = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector" in n for n in trained) and any("lora_" in n for n in trained)
    assert {p.dtype for p in trained.values()} == {torch.float32}
    before = inner.multi_modal_projector.linear_1.weight.detach().clone()
    opt = torch.optim.AdamW(list(trained.values()), lr=2e-5)
    inputs = m.build_inputs(["What is it?"] * 2, ["nurse", "chef"])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(images, inputs["input_ids"], inputs["attention_mask"])
    autoregressive_loss(logits, inputs["labels"]).mean().backward()
    opt.step()
    changed = (inner.multi_modal_projector.linear_1.weight != before).float().mean()
    assert changed > 0.99  # kept in bf16, many of these weights would not move at all
