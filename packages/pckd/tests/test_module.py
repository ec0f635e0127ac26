"""fit/validate/test on tiny.yaml through the CLI, and the loss falling on one repeated batch."""

import pytest
import torch
from mmzoo.testing import repeated_index_reads

from pckd.cli import main
from pckd.models import PCKDConfig
from pckd.module import PCKDModule
from pckd.testing import write_cifar100_python, write_repdistiller_checkpoint


def test_tiny_fit_validate_test(tmp_path):
    write_cifar100_python(tmp_path / "data", num_classes=10, n_train_per_class=4, n_test_per_class=2)
    teacher = write_repdistiller_checkpoint(tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth", "resnet8", 10)
    common = [
        "--config",
        "tiny",
        "--data.data_root",
        str(tmp_path / "data"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--model.teacher_checkpoint",
        str(teacher),
        "--model.teacher_random_init",
        "false",
    ]
    cli = main(args=["fit", *common])
    metrics = cli.trainer.callback_metrics
    for key in ("ce", "kd", "cc", "ca", "fa", "preview_mean", "preview_hard_frac"):
        assert f"train/{key}" in metrics and torch.isfinite(metrics[f"train/{key}"])
    assert "val/acc1" in metrics
    before = torch.load(teacher, weights_only=False)["model"]
    after = cli.model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher never changes
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    for key in ("test/acc1", "test/acc1_last", "test/acc1_best", "test/acc5"):
        assert key in cli.trainer.callback_metrics


def _module(method="pckd", **kw):
    cfg = PCKDConfig(student_arch="digits_student64", teacher_arch="digits_teacher", num_classes=4, in_channels=1)
    return PCKDModule(cfg, method=method, teacher_random_init=True, **kw)


def _small_cfg():
    return PCKDConfig("digits_student64", "digits_teacher", num_classes=4, in_channels=1, align_hidden_mult=2)


def test_loss_finite_and_falls_on_repeated_batch():
    torch.manual_seed(0)
    module = PCKDModule(_small_cfg(), teacher_random_init=True, optimizer="adam", lr=1e-2, weight_decay=0.0).train()
    image, label = torch.rand(8, 4, 1, 8, 8), torch.arange(8) % 4
    opt = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(8):
        out = module.compute_losses(image, label, epoch=1)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"]))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert out["ca"] > 0  # 64-d student vs 64-d teacher: L_CA is active


def test_only_ce_weight_equals_plain_ce():
    torch.manual_seed(0)
    module = _module(w_kd=0.0, w_cc=0.0, w_ca=0.0, w_fa=0.0).eval()  # BN running stats: same for 1 or 4 views
    image, label = torch.rand(6, 4, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    out = module.compute_losses(image, label, epoch=1)
    plain = torch.nn.functional.cross_entropy(module.student(image[:, 0]), label)
    torch.testing.assert_close(out["loss"], plain)


def test_teacher_stays_in_eval_mode_and_outside_the_optimizer():
    module = _module().train()
    assert not module.teacher.training
    opt_params = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in module.teacher.parameters())


def test_bad_inputs_raise():
    module = _module()
    with pytest.raises(ValueError, match="batch\\['image'\\]"):
        module.compute_losses(torch.rand(2, 4, 3, 8, 8), torch.zeros(2, dtype=torch.long), epoch=1)
    with pytest.raises(ValueError, match="empty batch"):
        module.compute_losses(torch.rand(0, 4, 1, 8, 8), torch.zeros(0, dtype=torch.long), epoch=1)
    with pytest.raises(ValueError, match="model.teacher_checkpoint is not set"):
        PCKDModule(PCKDConfig(student_arch="resnet8", teacher_arch="resnet8", num_classes=10))
    with pytest.raises(FileNotFoundError, match="model.teacher_checkpoint"):
        PCKDModule(
            PCKDConfig(student_arch="resnet8", teacher_arch="resnet8", num_classes=10),
            teacher_checkpoint="/nonexistent/ckpt_epoch_240.pth",
        )


@pytest.mark.parametrize(
    "method,weights",
    [
        ("pckd", {}),
        ("pckd", {"w_cc": 0.0}),  # the shipped pckd_wo_cc ablation
        ("pckd", {"w_fa": 0.0}),
        ("pckd", {"w_kd": 0.0, "w_cc": 0.0, "w_fa": 0.0, "w_ca": 0.0}),
        ("kd", {}),
    ],
)
def test_every_optimised_parameter_gets_a_gradient(method, weights):
    """DDP with find_unused_parameters=False (Lightning's default) stops at the second step when a parameter that
    requires grad gets none; a head switched off by a zero weight must be frozen and left out of the optimizer."""
    torch.manual_seed(0)
    module = PCKDModule(_small_cfg(), method=method, teacher_random_init=True, **weights).train()
    with repeated_index_reads() as repeated:  # gradients of repeated rows summed in a fixed order (runs repeat)
        out = module.compute_losses(torch.rand(4, 4, 1, 8, 8), torch.arange(4), epoch=1)
    assert repeated == []
    out["loss"].backward()
    no_grad = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    opt_params = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.parameters() if p.requires_grad}


def _step_written_out(module, image, label, epoch):
    """Spec §3.6 spelled out term by term from the module's networks and heads, with the preview weights kept in
    the graph on the KD term and detached on the L_CC term (the release's step)."""
    b, v = image.shape[:2]
    flat = image.flatten(0, 1)
    f_s = module.student.forward_features(flat)
    z_s = module.student.fc(f_s)
    with torch.no_grad():
        f_t = module.teacher.forward_features(flat)
        z_t = module.teacher.fc(f_t)
    first = torch.arange(b * v) % v == 0  # the un-rotated view of every image
    ce_i = torch.nn.functional.cross_entropy(z_s[first], label, reduction="none")
    ratio = ce_i / ce_i.mean()
    weight = torch.where(ratio <= 1.005**epoch, torch.ones_like(ratio), torch.exp(-ratio.pow(2)))
    p_t = torch.softmax(z_t[first] / 4, 1)
    kl_i = (p_t * (p_t.log() - torch.log_softmax(z_s[first] / 4, 1))).sum(1) * 16 / b
    centers_s = torch.cat([module.student.fc.weight, module.student.fc.bias[:, None]], 1)
    centers_t = torch.cat([module.teacher.fc.weight, module.teacher.fc.bias[:, None]], 1)
    ca = (centers_s - centers_t).pow(2).mean()
    profiles = torch.cat(
        [module.embed_s(f_s) @ module.student.fc.weight.T, module.embed_t(f_s) @ module.teacher.fc.weight.T]
    )
    y = label.repeat_interleave(v).repeat(2)
    sim = profiles @ profiles.T / 4.0
    sim = sim - sim.max(1, keepdim=True).values.detach()
    other = 1 - torch.eye(len(y))
    same = (y[:, None] == y[None, :]).float() * other
    log_p = sim - torch.log((sim.exp() * other).sum(1, keepdim=True) + 1e-7)
    ell = -(4.0 / 0.07) * (same * log_p).sum(1) / same.sum(1)
    cc_j = ell[: b * v] + ell[b * v :]
    h = torch.nn.functional.normalize(module.align(f_s), dim=1)
    fa = 2 - 2 * (h * torch.nn.functional.normalize(f_t, dim=1)).sum(1).mean()
    cc = (weight.detach().repeat_interleave(v) * cc_j).sum() / (b * v)
    return ce_i.mean() + (weight * kl_i).sum() + 0.05 * cc + ca + 20.0 * fa, weight


def test_full_objective_and_its_gradient_match_the_written_out_step():
    torch.manual_seed(3)
    module = PCKDModule(_small_cfg(), teacher_random_init=True, detach_preview_weights=False).train()
    image, label = torch.rand(8, 4, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 0])
    grads = []
    for compute in (lambda: module.compute_losses(image, label, epoch=1)["loss"],
                    lambda: _step_written_out(module, image, label, epoch=1)[0]):  # fmt: skip
        module.zero_grad()
        loss = compute()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}))
    (ours, g_ours), (ref, g_ref) = grads
    weight = _step_written_out(module, image, label, epoch=1)[1]
    assert (weight < 1).any() and (weight == 1).any()  # both easy and hard samples in the batch
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert g_ours.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g_ours[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pckd_with_a_single_view_warns_naming_the_keys():
    from types import SimpleNamespace

    module = _module()
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(hparams={"num_views": 1}))
    with pytest.warns(UserWarning, match=r"model\.method=pckd with data\.num_views=1"):
        module.on_fit_start()


def test_single_view_batch_of_one_image_names_the_settings():
    # a last batch of one image with data.num_views=1: H's BatchNorm1d cannot train on one row
    module = PCKDModule(_small_cfg(), teacher_random_init=True).train()
    image, label = torch.rand(1, 1, 1, 8, 8), torch.tensor([2])
    with pytest.raises(ValueError, match=r"image index 7 .*data\.num_views=4.*data\.drop_last=true.*data\.batch_size"):
        module.compute_losses(image, label, epoch=1, index=torch.tensor([7]))
    # four rotated views of the same single image are four rows: trains
    out = module.compute_losses(torch.rand(1, 4, 1, 8, 8), label, epoch=1, index=torch.tensor([7]))
    assert torch.isfinite(out["loss"])
