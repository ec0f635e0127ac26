import math

import pytest
import torch

from tsgsv.losses import (
    TSGSVLoss,
    focal_bce_loss,
    gaussian_labels,
    kd_weight_schedule,
    span_loss,
    twin_kd_loss,
    twin_regression_loss,
)
from tsgsv.models import TSGSVOutput


def test_gaussian_labels_spec_values():
    frames = torch.arange(16, 24, dtype=torch.float32)
    y = gaussian_labels(frames, torch.tensor(10.0), torch.tensor(30.0), (0.25, 0.25, 0.21))
    expect_s = [0.4868, 0.3753, 0.2780, 0.1979, 0.1353, 0.0889, 0.0561, 0.0340]
    expect_sem = [0.6354, 0.7748, 0.8928, 0.9721, 1.0, 0.9721, 0.8928, 0.7748]
    torch.testing.assert_close(y[:, 0], torch.tensor(expect_s), atol=1e-4, rtol=0)
    torch.testing.assert_close(y[:, 2], torch.tensor(expect_sem), atol=1e-4, rtol=0)
    # end label is the start label mirrored around e* = 30
    torch.testing.assert_close(y[:, 1], torch.exp(-((frames - 30) ** 2) / (2 * 5.0**2)))


def test_focal_bce_value_and_gradient():
    x = torch.zeros(1, 1, 3, requires_grad=True)
    y = torch.ones(1, 1, 3)
    per = focal_bce_loss(x, y, torch.zeros(1, 1, dtype=torch.bool), gamma=3.0)
    torch.testing.assert_close(per, torch.full((3,), 0.125 * math.log(2)))
    assert abs(float(per[0]) - 0.08664) < 1e-5
    per.sum().backward()
    # the focal factor 0.5^3 carries no gradient: d/dx = 0.125 · (σ(0) − 1) = −0.0625
    torch.testing.assert_close(x.grad, torch.full((1, 1, 3), -0.0625))


def test_focal_bce_plain_loop_and_mask():
    torch.manual_seed(0)
    x, y = torch.randn(2, 5, 3), torch.rand(2, 5, 3)
    invalid = torch.tensor([[True, False, False, False, False], [False, False, False, True, True]])
    per = focal_bce_loss(x, y, invalid, 2.0)
    ref = torch.zeros(3)
    count = 0
    for b in range(2):
        for t in range(5):
            if invalid[b, t]:
                continue
            count += 1
            for c in range(3):
                p = torch.sigmoid(x[b, t, c])
                bce = -(y[b, t, c] * torch.log(p) + (1 - y[b, t, c]) * torch.log(1 - p))
                ref[c] += (p - y[b, t, c]).abs() ** 2 * bce
    torch.testing.assert_close(per, ref / count)
    x2 = x.clone()
    x2[invalid] = 100.0  # masked positions do not change the loss
    torch.testing.assert_close(focal_bce_loss(x2, y, invalid, 2.0), per)


def test_span_channel_weights():
    torch.manual_seed(1)
    x, y = torch.randn(3, 4, 3), torch.rand(3, 4, 3)
    inv = torch.zeros(3, 4, dtype=torch.bool)
    per = focal_bce_loss(x, y, inv, 3.0)
    assert torch.allclose(span_loss(x, y, inv, 3.0), 0.5 * per[0] + 0.5 * per[1] + per[2])


def test_kd_total_and_detached_target():
    torch.manual_seed(2)
    main = torch.randn(2, 4, 3, requires_grad=True)
    twin = torch.randn(2, 4, 3, requires_grad=True)
    y = torch.rand(2, 4, 3)
    inv = torch.zeros(2, 4, dtype=torch.bool)
    lam = 0.4
    terms = twin_kd_loss(main, twin, y, inv, lam, 3.0)
    expect = (
        (1 - lam) * span_loss(main, y, inv, 3.0)
        + span_loss(twin, y, inv, 3.0)
        + lam * span_loss(main, torch.sigmoid(twin).detach(), inv, 3.0)
    )
    torch.testing.assert_close(terms["loss"], expect)
    terms["loss"].backward()
    twin_ref = twin.detach().clone().requires_grad_(True)
    span_loss(twin_ref, y, inv, 3.0).backward()
    torch.testing.assert_close(twin.grad, twin_ref.grad)  # the KD term sends no gradient into the twin


def test_no_twin_is_main_only():
    x, y = torch.randn(2, 4, 3), torch.rand(2, 4, 3)
    inv = torch.zeros(2, 4, dtype=torch.bool)
    assert torch.allclose(twin_kd_loss(x, None, y, inv, 0.4, 3.0)["loss"], span_loss(x, y, inv, 3.0))


def test_twinnet_regression_variant():
    torch.manual_seed(3)
    B, T, h = 2, 4, 5
    main, twin, y = torch.randn(B, T, 3), torch.randn(B, T, 3), torch.rand(B, T, 3)
    reg, tf = torch.randn(B, T, 3, h, requires_grad=True), torch.randn(B, T, 3, h, requires_grad=True)
    inv = torch.tensor([[False, False, True, True], [False, False, False, False]])
    terms = twin_regression_loss(main, twin, reg, tf, y, inv, 0.2, 3.0)
    valid = ~inv
    mse = ((reg.detach() - tf.detach())[valid] ** 2).mean()
    expect = span_loss(main, y, inv, 3.0) + span_loss(twin, y, inv, 3.0) + 0.2 * mse
    torch.testing.assert_close(terms["loss"], expect)
    terms["loss_twinnet"].backward()
    assert tf.grad is None or torch.all(tf.grad == 0)  # the twin features are a detached target
    assert reg.grad.abs().sum() > 0
    module = TSGSVLoss(h, tpn_type="twinnet", kd_weight=0.2)
    out = module(TSGSVOutput(main, torch.randn(B, T, 3, h), twin, tf.detach()), y, inv)
    assert set(out) == {"loss", "loss_main", "loss_twin", "loss_twinnet"}


def test_loss_module_checks_shapes():
    with pytest.raises(ValueError, match="do not match"):
        TSGSVLoss(4)(TSGSVOutput(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3, 4)), torch.zeros(2, 5, 3),
                     torch.zeros(2, 4, dtype=torch.bool))  # fmt: skip


def test_kd_weight_warmup_schedule():
    # λ_p = λ · (2 / (1 + e^{−10p}) − 1)
    assert kd_weight_schedule(0.4, 0.0) == 0.0
    assert abs(kd_weight_schedule(0.4, 1.0) - 0.4 * (2 / (1 + math.exp(-10)) - 1)) < 1e-12
    assert abs(kd_weight_schedule(0.4, 0.1) - 0.4 * 0.46211716) < 1e-7  # tanh(0.5)
    assert kd_weight_schedule(0.4, 2.0) == kd_weight_schedule(0.4, 1.0)  # p clamped to [0, 1]
    values = [kd_weight_schedule(0.2, p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 0.2


def test_loss_kd_weight_override():
    torch.manual_seed(0)
    out = TSGSVOutput(torch.randn(2, 4, 3), torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3), torch.randn(2, 4, 3, 8))
    y, invalid = torch.rand(2, 4, 3), torch.zeros(2, 4, dtype=torch.bool)
    loss = TSGSVLoss(8, kd_weight=0.4)
    terms = loss(out, y, invalid, kd_weight=0.1)
    ref = twin_kd_loss(out.logits, out.twin_logits, y, invalid, 0.1, 3.0)
    torch.testing.assert_close(terms["loss"], ref["loss"])
    torch.testing.assert_close(loss(out, y, invalid)["loss"], twin_kd_loss(out.logits, out.twin_logits, y, invalid, 0.4,
                                                                        3.0)["loss"])  # fmt: skip


def test_module_kd_warmup_hook():
    from types import SimpleNamespace

    from tsgsv.models import TSGSVConfig
    from tsgsv.module import TSGSVModule

    cfg = TSGSVConfig(video_dim=8, text_dim=8, hidden_dim=16, ffn_dim=16, num_heads=2, short_memory=4, long_memory=8,
                      future_memory=8, gru_layers=1, compressor_tokens=[2])  # fmt: skip
    off = TSGSVModule(cfg, kd_weight=0.4)
    warm = TSGSVModule(cfg, kd_weight=0.4, kd_warmup=True)
    for step in (0, 10, 50, 100):
        fake = SimpleNamespace(global_step=step, estimated_stepping_batches=100)
        off._trainer, warm._trainer = fake, fake
        assert off.current_kd_weight() == 0.4  # default: constant λ (official configs)
        assert abs(warm.current_kd_weight() - kd_weight_schedule(0.4, step / 100)) < 1e-12
