import math

import pytest
import torch
import torch.nn.functional as F

from radartag.losses import RadarLoss, adversarial_lambda, discriminator_losses, tagging_loss


def test_lambda_schedule():
    assert abs(adversarial_lambda(5, 100, 0.01, 20.0) - 0.004621) < 1e-6
    assert adversarial_lambda(0, 100) == 0.0


def test_tagging_loss_plain_loop():
    torch.manual_seed(0)
    s, y = torch.randn(3, 4), (torch.rand(3, 4) > 0.5).float()
    ref = 0.0
    for i in range(3):
        for j in range(4):
            p = torch.sigmoid(s[i, j])
            ref += -(y[i, j] * math.log(p) + (1 - y[i, j]) * math.log(1 - p))
    assert abs(float(tagging_loss(s, y)) - 333 * ref / 12) < 1e-3
    with pytest.raises(ValueError):
        tagging_loss(s, y[:2])


def test_discriminator_losses_labels_and_averaging():
    logits = [{"unique": torch.tensor([2.0, -1.0, 0.5, 3.0]), "common": torch.tensor([0.0, 1.0, -2.0, 0.5])}]
    du, dc = discriminator_losses(logits * 2, lam=0.1)
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])  # visual first, linguistic second
    torch.testing.assert_close(du, F.binary_cross_entropy_with_logits(logits[0]["unique"], y) / 2)
    torch.testing.assert_close(dc, 0.1 * F.binary_cross_entropy_with_logits(logits[0]["common"], y) / 2)


def test_step_counter_first_step():
    loss = RadarLoss(total_step=20)
    out = loss(torch.zeros(2, 3), torch.zeros(2, 3), [])
    assert int(loss.step) == 1 and abs(float(out["lambda_p"]) - adversarial_lambda(1, 20)) < 1e-9
    loss.eval()
    loss(torch.zeros(2, 3), torch.zeros(2, 3), [])
    assert int(loss.step) == 1  # only training forwards advance the schedule
