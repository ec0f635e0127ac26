"""The shipped paper configs at their real size (CLIP ViT-B/32, ViT-B/16), loaded through the real weight path (an
OpenAI-format TorchScript checkpoint with random weights): module modes during training steps, what trains, the
optimiser's groups and the schedule (spec §3.1, §3.10)."""

import pytest
import torch
from lightning.pytorch import Callback
from mmzoo.cli import build, shipped_configs
from torch import nn

from shenet.models import SHENet, SHENetConfig
from shenet.optim import param_groups, warmup_cosine
from shenet.synthetic import write_digits_official

REAL = [c for c in shipped_configs("shenet") if c not in ("tiny", "demo")]


def write_openai_torchscript(clip_model: str, path) -> str:
    """An OpenAI-style TorchScript CLIP checkpoint (fp16 tensors under OpenAI's names) with random weights."""
    import open_clip

    clip = open_clip.create_model(clip_model, pretrained=None, force_quick_gelu=True)

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in clip.state_dict().items():
        *parents, leaf = key.split(".")
        mod = root
        for name in parents:
            if not hasattr(mod, name):
                mod.add_module(name, Holder())
            mod = getattr(mod, name)
        mod.register_buffer(leaf, value.half() if value.is_floating_point() and leaf != "logit_scale" else value)
    torch.jit.save(torch.jit.script(root), str(path))
    return str(path)


class Probe(Callback):
    """Records, at the first training batch (after the sanity validation), the modes of every module."""

    def __init__(self):
        self.seen = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen is None:
            assert not trainer.sanity_checking
            self.seen = {
                "sanity_ran": trainer.num_sanity_val_steps > 0,
                "eval": [n for n, m in pl_module.named_modules() if not m.training],
                "lr_scale": [g["lr"] / g["initial_lr"] for g in trainer.optimizers[0].param_groups],
            }


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One training step of the shipped msrvtt config at ViT-B/32, CLIP loaded from a TorchScript checkpoint."""
    tmp = tmp_path_factory.mktemp("shenet_real")
    ckpt = write_openai_torchscript("ViT-B-32", tmp / "ViT-B-32.pt")
    data_root = write_digits_official("msrvtt", tmp / "data", num_train=4, num_test=2)
    built = build(
        "shenet", "msrvtt",
        f"--model.config.pretrained={ckpt}", f"--data.data_root={data_root}", f"--trainer.default_root_dir={tmp}",
        "--data.max_frames=2", "--data.batch_size=2", "--data.eval_batch_size=2", "--data.num_workers=0",
        "--data.pin_memory=false", "--data.persistent_workers=false", "--data.parser.backend=heuristic",
        "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.enable_checkpointing=false",  # ViT-B/32 + AdamW: 1.8 GB
        "--trainer.num_sanity_val_steps=1", "--trainer.limit_val_batches=1", "--trainer.max_steps=1",
    )  # fmt: skip
    probe = Probe()
    built.trainer.callbacks.append(probe)
    built.trainer.fit(built.model, datamodule=built.datamodule)
    return built, probe.seen


def test_loaded_clip_trains_in_train_mode(fitted):
    built, seen = fitted
    assert built.model.config.clip_model == "ViT-B-32" and built.model.model.clip.visual.transformer.width == 768
    assert seen["sanity_ran"]
    assert seen["eval"] == []  # CLIP included: both towers are fine-tuned end to end


def test_first_step_starts_the_warmup(fitted):
    _, seen = fitted
    assert seen["lr_scale"] == [0.0] * len(seen["lr_scale"])  # x / 0.1 at x = 0


def _groups_by_name(model, optimizer):
    where = {}
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            assert id(p) not in where, "a parameter is in two groups"
            where[id(p)] = i
    return {n: optimizer.param_groups[where[id(p)]] for n, p in model.named_parameters() if id(p) in where}


def test_optimizer_groups_match_the_recipe_on_real_names(fitted):
    built, _ = fitted
    module = built.model
    opt = built.trainer.optimizers[0]
    by_name = _groups_by_name(module.model, opt)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable == {n for n, _ in module.model.named_parameters()}
    for name, group in by_name.items():
        assert group["initial_lr"] == pytest.approx(1e-4 * (1e-3 if name.startswith("clip.") else 1.0)), name
        assert group["weight_decay"] == (0.0 if "bias" in name else 0.2), name
    # CLIP4Clip's rule decays CLIP's ln_* weights, embeddings and the logit scale; biases are not decayed
    for name in ("clip.ln_final.weight", "clip.visual.ln_pre.weight", "clip.token_embedding.weight",
                 "clip.visual.class_embedding", "clip.logit_scale", "clip.visual.conv1.weight"):  # fmt: skip
        assert by_name[name]["weight_decay"] == 0.2 and by_name[name]["initial_lr"] == pytest.approx(1e-7), name
    assert by_name["clip.visual.transformer.resblocks.0.attn.in_proj_bias"]["weight_decay"] == 0.0


def test_schedule_follows_the_trainer_step_count(fitted):
    built, _ = fitted
    sched = built.trainer.lr_scheduler_configs[0]
    assert sched.interval == "step"
    total = int(built.trainer.estimated_stepping_batches)
    lam = sched.scheduler.lr_lambdas[0]
    for step in (0, 1, total // 2, total):
        assert lam(step) == pytest.approx(warmup_cosine(step, total, 0.1))


@pytest.mark.parametrize("name", REAL)
def test_every_shipped_config_trains_exactly_its_used_parameters(name):
    """Each shipped config's switches at the real architecture: frozen extras stay out of the optimiser, all else
    (the whole CLIP included) trains in one group each."""
    import yaml
    from mmzoo.cli import resolve_config

    cfg = yaml.safe_load(open(resolve_config(name, "shenet")))["model"]["config"]
    cfg.update(pretrained=None, random_init=True)
    model = SHENet(SHENetConfig(**cfg))
    assert all(m.training for m in model.modules())
    unused = {id(p) for p in model.unused_parameters()}
    groups = param_groups(model.named_parameters(), 1e-4, 1e-3, 0.2)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    expected = {id(p) for p in model.parameters() if id(p) not in unused}
    assert set(grouped) == expected
    assert all(p.requires_grad for p in model.clip.parameters())
