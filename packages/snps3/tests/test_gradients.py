"""Every trainable parameter receives a gradient from the training loss, for every shipped config's model settings
and every ablation switch. DDP with ``find_unused_parameters=False`` stops at the second step otherwise."""

from pathlib import Path

import pytest
import torch
import yaml
from mmzoo.testing import repeated_index_reads

import snps3.configs
from snps3.models import SNPS3Config
from snps3.module import SNPS3Module

B, L, T, SIZE = 4, 8, 2, 32

# architecture keys replaced by tiny values; the visual encoder type is kept (Video Swin shrunk)
TINY = dict(
    bert=None,
    vocab_size=64,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
    cls_token_id=2,
    sep_token_id=3,
    pad_token_id=0,
    mask_token_id=4,
    p3e_cross_layers=1,
    tiny_cnn_channels=8,
    visual_weights=None,
    swin_embed_dim=8,
    swin_depths=[1, 1, 1, 1],
    swin_heads=[1, 1, 1, 1],
    swin_window=[2, 7, 7],
)
SWITCHES = ("use_l1", "use_l2", "use_mlm", "use_itm", "use_lvwm")


def shipped_model_settings():
    """(config name, model section, data masking) of every shipped config whose task trains (MC is zero-shot)."""
    out = []
    for path in sorted(Path(snps3.configs.__file__).parent.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if cfg["model"].get("task", "pretrain") != "mc":
            out.append(pytest.param(cfg["model"], cfg["data"].get("masking", "mssm"), id=path.stem))
    return out


def ablations():
    """Model settings (on the tiny pre-training/fine-tuning setup) and the data-side masking."""
    cases = []
    for arch in ("snp", "p3e"):
        pre = dict(task="pretrain", arch=arch)
        cases += [(f"{arch}-pretrain-all", {**pre}, "mssm"), (f"{arch}-pretrain-nomask", {**pre}, "none")]
        for s in SWITCHES:
            cases.append((f"{arch}-pretrain-no_{s[4:]}", {**pre, s: False}, "mssm"))
            cases.append((f"{arch}-pretrain-only_{s[4:]}", {**pre, **{k: k == s for k in SWITCHES}}, "mssm"))
        gvtm = {**pre, "use_mlm": False, "use_lvwm": False}  # Table III "GVTM" = L1 + L2 + ITM
        cases.append((f"{arch}-pretrain-gvtm", gvtm, "mlm"))
        cases.append((f"{arch}-pretrain-mlm_gvtm", {**pre, "use_lvwm": False}, "mlm"))
        for stage in ("before", "both"):
            cases.append((f"{arch}-pretrain-lvwm_{stage}", {**pre, "lvwm_stage": stage}, "mssm"))
            only = {**pre, **{k: k == "use_lvwm" for k in SWITCHES}, "lvwm_stage": stage}
            cases.append((f"{arch}-pretrain-only_lvwm_{stage}", only, "mssm"))
        cases.append((f"{arch}-pretrain-text_mlm_masked", {**pre, "text_mlm_input": "masked"}, "mssm"))
        cases.append((f"{arch}-pretrain-no_attentive", {**pre, "attentive_mask_prob": 0.0}, "mssm"))
        cases.append((f"{arch}-pretrain-no_moco", {**pre, "with_moco": False}, "mssm"))
        for moco in (True, False):
            ret = dict(task="retrieval", arch=arch, with_moco=moco, use_mlm=False, use_itm=False, use_lvwm=False)
            tag = f"{arch}-retrieval-{'moco' if moco else 'milnce'}"
            cases += [
                (f"{tag}-l1_l2", ret, "none"),
                (f"{tag}-only_l1", {**ret, "use_l2": False}, "none"),
                (f"{tag}-only_l2", {**ret, "use_l1": False}, "none"),
            ]
        cases.append((f"{arch}-qa", dict(task="qa", arch=arch, num_answers=7), "none"))
    return [pytest.param(model, masking, id=name) for name, model, masking in cases]


def build(model: dict) -> SNPS3Module:
    """A tiny SNPS3Module from a model section (``config`` sub-dict or flat ``arch``/``num_answers`` keys)."""
    model = dict(model)
    config = {**model.pop("config", {}), **TINY}
    for key in ("arch", "num_answers"):
        if key in model:
            config[key] = model.pop(key)
    for key in ("init_checkpoint", "lr_steps", "lr_step_unit", "warmup_iterations", "num_threads"):  # no Trainer here
        model.pop(key, None)
    model["moco_queue_size"] = 16
    if model.get("attentive_mask_prob", 0.5) > 0:
        model["attentive_mask_prob"] = 1.0  # the attention-guided re-masking on every step (deterministic)
    return SNPS3Module(SNPS3Config(**config), **model)


def tiny_batch(masking: str, num_answers: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 64, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS]/[SEP] stand-ins within the tiny vocabulary
    attn = torch.ones(B, L, dtype=torch.long)
    attn[0, -2:] = 0
    labels = torch.full((B, L), -1)
    mids = ids.clone()
    if masking != "none":
        labels[:, 2] = ids[:, 2]
        mids[:, 2] = 4
    return {
        "frames": torch.randn(B, T, 3, SIZE, SIZE, generator=g),
        "input_ids": ids,
        "attention_mask": attn,
        "mlm_input_ids": mids,
        "mlm_labels": labels,
        "word_significant": torch.zeros(B, L, dtype=torch.bool).index_fill_(1, torch.tensor([2, 3]), True),
        "neg_input_ids": ids.roll(1, 0),
        "neg_attention_mask": attn.roll(1, 0),
        "label": torch.arange(B) % max(num_answers, 1),
    }


def assert_every_trainable_parameter_gets_a_gradient(model: dict, masking: str) -> None:
    torch.manual_seed(0)
    module = build(model)
    module.train()
    with repeated_index_reads() as repeated:  # gradients of repeated rows summed in a fixed order (runs repeat)
        loss = module.training_step(tiny_batch(masking, module.config.num_answers), 0)
    assert repeated == []  # the Video Swin bias table included (snps3.swin_attention)
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient: {missing}"
    # nothing a loss reaches is frozen: with the model unfrozen, exactly the frozen tensors get no gradient
    frozen = {n for n, p in module.model.named_parameters() if not p.requires_grad}
    module.model.requires_grad_(True)
    module.zero_grad(set_to_none=True)
    module.training_step(tiny_batch(masking, module.config.num_answers), 1).backward()
    assert {n for n, p in module.model.named_parameters() if p.grad is None} == frozen
    module.model.requires_grad_(False)
    for n, p in module.model.named_parameters():
        p.requires_grad_(n not in frozen)
    # what the optimiser holds is exactly the trainable set
    opt = module.configure_optimizers()["optimizer"]
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert held == {id(p) for p in module.parameters() if p.requires_grad}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize(("model", "masking"), shipped_model_settings() + ablations())
def test_every_trainable_parameter_gets_a_gradient(model, masking):
    assert_every_trainable_parameter_gets_a_gradient(model, masking)
