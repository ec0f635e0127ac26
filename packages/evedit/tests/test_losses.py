import pytest
import torch

from evedit.losses import TemporalConsistencyLoss, agreement_loss, tcc_loss, temporal_loss


def _loop_temporal(x0, ref, pairs):
    n = x0.shape[0]
    total = 0.0
    for f in range(1, n):
        g = f - 1 if pairs == "consecutive" else 0
        r = (ref[f] - ref[g]) if ref is not None else 0.0
        total += ((x0[f] - x0[g]) - r).pow(2).mean().item()
    return total / (n - 1)


@pytest.mark.parametrize("pairs", ["consecutive", "key"])
@pytest.mark.parametrize("with_ref", [True, False])
def test_temporal_loss_matches_loop(pairs, with_ref):
    g = torch.Generator().manual_seed(0)
    x0, ref = torch.randn(5, 2, 3, 3, generator=g), torch.randn(5, 2, 3, 3, generator=g)
    r = ref if with_ref else None
    assert temporal_loss(x0, r, pairs).item() == pytest.approx(_loop_temporal(x0, r, pairs), rel=1e-5)


def test_temporal_loss_hand_case():
    # two frames, one element: x0 = [1, 4], ref = [0, 1] -> ((4-1) - (1-0))^2 = 4
    x0 = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1)
    ref = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    assert temporal_loss(x0, ref).item() == pytest.approx(4.0)
    assert temporal_loss(x0, None).item() == pytest.approx(9.0)


def test_temporal_loss_zero_for_source_plus_shared_offset():
    z0 = torch.randn(4, 4, 8, 8)
    offset = torch.randn(1, 4, 8, 8)
    assert temporal_loss(z0 + offset, z0).item() == pytest.approx(0.0, abs=1e-10)
    assert temporal_loss(torch.randn(1, 4, 2, 2), None).item() == 0.0


def test_agreement_loss_values_and_stop_gradient():
    a = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1).requires_grad_(True)
    b = torch.tensor([0.0, 0.0]).view(2, 1, 1, 1).requires_grad_(True)
    loss = agreement_loss(a, b, "text")  # mean((a - sg(b))^2) = (1 + 4) / 2
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    assert b.grad is None and torch.allclose(a.grad.flatten(), torch.tensor([1.0, 2.0]))
    a.grad = None
    agreement_loss(a, b, "depth").backward()
    assert a.grad is None and torch.allclose(b.grad.flatten(), torch.tensor([-1.0, -2.0]))
    assert agreement_loss(a, a.detach().clone()).item() == 0.0


def test_tcc_loss_combines_terms_and_module_matches():
    x0, x0t, ref = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    out = tcc_loss(x0, x0t, ref, 2.0, 0.25)
    assert out["loss"].item() == pytest.approx(2.0 * out["tmp"].item() + 0.25 * out["agr"].item(), rel=1e-6)
    mod = TemporalConsistencyLoss(2.0, 0.25)(x0, x0t, ref)
    assert torch.equal(mod["loss"], out["loss"])


def test_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match="latents"):
        temporal_loss(torch.randn(3, 4), None)
    with pytest.raises(ValueError, match="match"):
        temporal_loss(torch.randn(3, 1, 2, 2), torch.randn(2, 1, 2, 2))
    with pytest.raises(ValueError, match="shapes differ"):
        agreement_loss(torch.randn(3, 1, 2, 2), torch.randn(2, 1, 2, 2))
