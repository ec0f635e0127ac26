import math

import torch
import torch.nn.functional as F

from shagcl.gcl import median_resampling_rates
from shagcl.losses import GCLLoss, collaborative_kd_loss, group_ce_loss, object_loss, smoothed_kl


def test_group_ce_maps_labels_and_skips_empty():
    torch.manual_seed(0)
    logits = [torch.randn(4, 3), torch.randn(4, 5)]
    labels = torch.tensor([1, 4, 0, 2])
    assignment = torch.tensor([[True, True, False, True], [False, False, False, False]])
    out = group_ce_loss(logits, labels, assignment, 2, [2, 4])
    assert set(out) == {1}  # classifier 2 got no pair: skipped, not NaN
    ref = sum(-F.log_softmax(logits[0][i], -1)[t] for i, t in ((0, 1), (1, 0), (3, 2))) / 3
    torch.testing.assert_close(out[1], ref)


def test_smoothed_kl_by_hand():
    t, s = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    p, q = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    eps = 1e-8
    p, q = (p + eps) / (1 + 2 * eps), (q + eps) / (1 + 2 * eps)
    torch.testing.assert_close(smoothed_kl(t, s)[0], (p * (p / q).log()).sum())


def test_kd_two_samples_weights_and_gradients():
    logits = [
        torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], requires_grad=True),
        torch.tensor([[5.0, 0.0, 1.0, 3.0], [1.0, 1.0, 0.0, 0.0]], requires_grad=True),
    ]
    labels = torch.tensor([1, 3])  # sample 2 is background for classifier 1 (n_1 = 2) -> weight 0.1
    assignment = torch.ones(2, 2, dtype=torch.bool)
    out = collaborative_kd_loss(logits, labels, assignment, 2, [2, 3])
    kl = smoothed_kl(logits[0][:, 1:3], logits[1][:, 1:3])
    torch.testing.assert_close(out[2], (kl[0] * 1.0 + kl[1] * 0.1) / 2)
    out[2].backward()
    assert logits[0].grad.abs().sum() > 0 and logits[1].grad.abs().sum() > 0  # both sides receive gradients
    plain = collaborative_kd_loss(logits, labels, assignment, 2, [2, 3], restrain=False)
    torch.testing.assert_close(plain[2], kl.mean())


def test_kd_neighbor_uses_only_previous_classifier():
    torch.manual_seed(0)
    logits = [torch.randn(5, 3), torch.randn(5, 4), torch.randn(5, 5)]
    labels = torch.tensor([1, 2, 3, 0, 4])
    a = torch.ones(3, 5, dtype=torch.bool)
    top = collaborative_kd_loss(logits, labels, a, 3, [2, 3, 4])
    nb = collaborative_kd_loss(logits, labels, a, 3, [2, 3, 4], mode="KL_logit_Neighbor")
    w = torch.where((labels >= 1) & (labels <= 3), 1.0, 0.1)
    only_21 = (w * smoothed_kl(logits[1][:, 1:4], logits[2][:, 1:4])).mean()
    torch.testing.assert_close(nb[3], only_21)
    assert top[3] > nb[3]
    assert collaborative_kd_loss(logits, labels, a, 3, [2, 3, 4], mode="None") == {}
    bi = collaborative_kd_loss(logits, labels, a, 3, [2, 3, 4], mode="KL_logit_BiDirection")
    assert bi[2] > top[2]


def test_gcl_loss_terms_and_object_loss():
    torch.manual_seed(0)
    counts = [1000, 400, 300, 50, 40, 5, 4]
    groups = [2, 2, 2]
    loss = GCLLoss(groups, median_resampling_rates(counts, groups))
    logits = [torch.randn(8, n + 1, requires_grad=True) for n in (2, 4, 6)]
    labels = torch.tensor([1, 2, 5, 6, 0, 0, 0, 3])
    terms = loss(logits, labels)
    assert "1_CE_loss" in terms and "2_DKS_loss" in terms and "3_DKS_loss" in terms
    assert torch.isfinite(terms["loss"])
    torch.testing.assert_close(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))
    obj = torch.randn(3, 5)
    torch.testing.assert_close(object_loss(obj, torch.tensor([1, 2, 0])), F.cross_entropy(obj, torch.tensor([1, 2, 0])))
