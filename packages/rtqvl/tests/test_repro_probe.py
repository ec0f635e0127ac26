"""The E step probe of ``repro.py --e-step-probe``: its statistics on hand cases (repro.py is a script, loaded by
path)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from rtqvl_testlib import quiet_trainer

_spec = importlib.util.spec_from_file_location("rtqvl_repro", Path(__file__).parents[1] / "repro.py")
repro = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repro)


def test_consistency_ratio_hand_cases():
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    assert repro.consistency_ratio(g.expand(5, 2, 2)) == pytest.approx(1.0)  # identical gradients
    alt = torch.stack([g if i % 2 == 0 else -g for i in range(6)])
    assert repro.consistency_ratio(alt) == pytest.approx(0.0, abs=1e-12)  # alternating ±g, even window
    assert repro.consistency_ratio(alt[:3]) == pytest.approx(1 / 3)  # g − g + g: |Σ| = |g|, Σ|·| = 3|g|
    ortho = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    assert repro.consistency_ratio(ortho) == pytest.approx(1 / math.sqrt(2))
    # scale of the steps does not matter, only their directions and relative lengths
    assert repro.consistency_ratio(7.0 * alt[:3]) == pytest.approx(1 / 3)


def test_order_part_drops_the_common_shift():
    e = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.allclose(repro.order_part(e), torch.tensor([[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]]))
    assert torch.equal(repro.order_part(torch.ones(2, 3)), torch.zeros(2, 3))  # same vector on every segment
    stack = torch.randn(4, 2, 3)
    assert torch.allclose(repro.order_part(stack).sum(dim=1), torch.zeros(4, 3), atol=1e-6)


def test_random_walk_reference_is_one_over_sqrt_w_and_rng_free():
    before = torch.random.get_rng_state()
    mean, std = repro.random_walk_consistency([1.0] * 12, (2, 256), draws=300)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert mean == pytest.approx(1 / math.sqrt(12), abs=0.01)
    assert 0 < std < 0.05
    # projected onto the order part, a (2, D) walk lives in D dimensions: same reference at high D
    mean_o, _ = repro.random_walk_consistency([1.0] * 12, (2, 256), draws=300, project=repro.order_part)
    assert mean_o == pytest.approx(1 / math.sqrt(12), abs=0.01)


class _Enc(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.temporal_embedding = torch.nn.Parameter(torch.zeros(2, 4))


class _Toy(pl.LightningModule):
    """Loss ⟨c, E⟩: a constant gradient c, so Adam's step is lr·sign(c) per entry and v̂ = c²."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.visual_encoder = _Enc()
        self.register_buffer("c", torch.tensor([[1.0, -2.0, 0.5, 4.0], [-1.0, 3.0, 2.0, -0.5]]))

    def training_step(self, batch, batch_idx):
        return (self.c * self.model.visual_encoder.temporal_embedding).sum()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.0)


def test_e_step_probe_on_a_constant_gradient(tmp_path):
    probe = repro.EStepProbe()
    data = torch.utils.data.DataLoader(torch.zeros(3, 1), batch_size=1)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[probe])
    trainer.fit(_Toy(), train_dataloaders=data)
    assert [(r["epoch"], r["batch"]) for r in probe.rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    c_rms = float(torch.tensor([1.0, 2.0, 0.5, 4.0, 1.0, 3.0, 2.0, 0.5]).pow(2).mean().sqrt())
    for i, r in enumerate(probe.rows):
        assert r["lr"] == pytest.approx(0.1)
        assert r["delta_rms_over_lr"] == pytest.approx(1.0, rel=1e-5)  # every entry moves by lr
        assert r["grad_rms"] == pytest.approx(c_rms, rel=1e-6)
        assert r["v_hat_over_grad"] == pytest.approx(1.0, rel=1e-5)  # steady gradient: √v̂ = |g|
        assert r["adam_step_rms"] == pytest.approx(1.0, rel=1e-5)
        assert r["E_rms"] == pytest.approx(0.1 * (i + 1), rel=1e-5)
    assert probe.weight_decay == 0.0
    summary = probe.summary(draws=50)
    assert [s["epoch"] for s in summary] == [0, 1]
    for s in summary:
        assert s["consistency"] == pytest.approx(1.0)
        assert s["consistency_order_part"] == pytest.approx(1.0)
        assert 1 / math.sqrt(3) - 0.2 < s["random_walk_consistency"] < 1.0
        assert s["path_rms"] == pytest.approx(0.3, rel=1e-5)
    assert summary[1]["E_rms_start"] == pytest.approx(0.3, rel=1e-5)
