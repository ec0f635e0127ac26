"""The CRD baseline (spec §3.10): NCE loss, normalisation constant, memory update, other-class negatives, the module
step and a short CLI fit (the two-process memory check is in test_distributed.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from pckd.cli import main
from pckd.losses import (
    CRDLoss,
    _uniform_positions,
    contrast_scores,
    crd_nce_loss,
    momentum_memory_rows,
    sample_other_class_negatives,
)
from pckd.models import PCKDConfig
from pckd.module import PCKDModule
from pckd.testing import write_cifar100_python


def nce_reference(probs, n):
    """−(1/B) Σ_i [log(P_i0 / (P_i0 + m/N + ε)) + Σ_k log((m/N) / (P_ik + m/N + ε))], written out."""
    eps, total = 1e-7, 0.0
    for row in probs.tolist():
        m = len(row) - 1
        total += math.log(row[0] / (row[0] + m / n + eps))
        total += sum(math.log((m / n) / (p + m / n + eps)) for p in row[1:])
    return -total / len(probs)


def test_nce_loss_matches_hand_computation():
    probs = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]])  # B = 2, m = 2
    # N = 4, m = 2: m·P_n = 0.5
    row0 = math.log(0.5 / (0.5 + 0.5)) + math.log(0.5 / (0.1 + 0.5)) + math.log(0.5 / (0.2 + 0.5))
    row1 = math.log(0.05 / (0.05 + 0.5)) + math.log(0.5 / (0.3 + 0.5)) + math.log(0.5 / (0.01 + 0.5))
    by_hand = -(row0 + row1) / 2
    assert float(crd_nce_loss(probs, 4)) == pytest.approx(by_hand, rel=1e-5)
    big = torch.rand(3, 9, generator=torch.Generator().manual_seed(0)) * 3
    assert float(crd_nce_loss(big, 50)) == pytest.approx(nce_reference(big, 50), rel=1e-5)
    # a better-separated positive lowers the loss
    assert crd_nce_loss(torch.tensor([[2.0, 0.1, 0.1]]), 4) < crd_nce_loss(torch.tensor([[0.1, 0.1, 0.1]]), 4)


def _crd(n=6, feat_dim=3, temperature=0.5):
    crd = CRDLoss(feat_dim=feat_dim, num_negatives=2, temperature=temperature, momentum=0.5)
    crd.init_memory(torch.tensor([0, 0, 1, 1, 2, 2])[:n])
    g = torch.Generator().manual_seed(0)
    crd.memory_s.copy_(F.normalize(torch.randn(n, feat_dim, generator=g), dim=1))
    crd.memory_t.copy_(F.normalize(torch.randn(n, feat_dim, generator=g), dim=1))
    return crd


def test_loss_uses_both_anchors_and_z_is_fixed_after_the_first_call():
    crd = _crd()
    g = torch.Generator().manual_seed(1)
    v_s, v_t = F.normalize(torch.randn(2, 3, generator=g), dim=1), F.normalize(torch.randn(2, 3, generator=g), dim=1)
    index, idx = torch.tensor([0, 2]), torch.tensor([[0, 2, 4], [2, 0, 5]])  # positive first, then 2 negatives
    mem_s, mem_t = crd.memory_s.clone(), crd.memory_t.clone()
    out_s = torch.stack([torch.exp(mem_t[idx[i]] @ v_s[i] / 0.5) for i in range(2)])  # student-anchored
    out_t = torch.stack([torch.exp(mem_s[idx[i]] @ v_t[i] / 0.5) for i in range(2)])  # teacher-anchored
    z_s, z_t = float(out_s.mean()) * 6, float(out_t.mean()) * 6  # Z = mean(exp(s/τ))·N
    loss = crd(v_s, v_t, index, sample_idx=idx)
    assert float(crd.z_s) == pytest.approx(z_s, rel=1e-5) and float(crd.z_t) == pytest.approx(z_t, rel=1e-5)
    expected = nce_reference(out_s / z_s, 6) + nce_reference(out_t / z_t, 6)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # a second call with other embeddings keeps Z (it would be re-estimated from these scores otherwise)
    v2 = F.normalize(torch.randn(2, 3, generator=g), dim=1)
    out2_s = torch.stack([torch.exp(crd.memory_t[idx[i]] @ v2[i] / 0.5) for i in range(2)])  # updated banks
    out2_t = torch.stack([torch.exp(crd.memory_s[idx[i]] @ v2[i] / 0.5) for i in range(2)])
    loss2 = crd(v2, v2, index, sample_idx=idx)
    assert (float(crd.z_s), float(crd.z_t)) == (pytest.approx(z_s, rel=1e-6), pytest.approx(z_t, rel=1e-6))
    assert float(out2_s.mean()) * 6 != pytest.approx(z_s, rel=1e-3)
    expected2 = nce_reference(out2_s / z_s, 6) + nce_reference(out2_t / z_t, 6)
    assert float(loss2) == pytest.approx(expected2, rel=1e-5)


def test_memory_update_rule():
    rows, emb = torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    new = momentum_memory_rows(rows, emb, 0.5)  # normalise(0.5·row + 0.5·v)
    torch.testing.assert_close(new, torch.tensor([[0.5**0.5, 0.5**0.5], [0.6, 0.8]]))
    crd = CRDLoss(feat_dim=2, num_negatives=1, temperature=0.07, momentum=0.25)
    crd.init_memory(torch.tensor([0, 1, 0, 1]))
    crd.memory_s.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]]))
    crd.memory_t.copy_(torch.tensor([[0.0, 3.0], [1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    before_s, before_t = crd.memory_s.clone(), crd.memory_t.clone()
    v_s, v_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    crd.update_memory(torch.tensor([1, 2]), v_s, v_t)
    # rows 1 and 2: normalise(0.25·row + 0.75·v) of each side's own embedding; rows 0 and 3 untouched
    torch.testing.assert_close(crd.memory_s[1], F.normalize(torch.tensor([0.75, 0.5]), dim=0))
    torch.testing.assert_close(crd.memory_s[2], F.normalize(torch.tensor([0.5, 0.75]), dim=0))
    torch.testing.assert_close(crd.memory_t[1], F.normalize(torch.tensor([0.25, 0.75]), dim=0))
    torch.testing.assert_close(crd.memory_t[2], F.normalize(torch.tensor([0.25, 1.0]), dim=0))
    torch.testing.assert_close(crd.memory_s[[0, 3]], before_s[[0, 3]])
    torch.testing.assert_close(crd.memory_t[[0, 3]], before_t[[0, 3]])
    # an index twice in one (gathered) batch: only the last occurrence is applied ([0, 2] → [0, 1.25]); the first
    # would give [0.75, 0.5], both in turn [0.21, 0.89] (normalised)
    crd.update_memory(torch.tensor([3, 3]), v_s, v_t)
    torch.testing.assert_close(crd.memory_s[3], torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("m", [5, 40, 300])  # every pool ≥ m; mixed; every pool < m (with replacement)
def test_negatives_never_share_the_anchor_class(m):
    labels = torch.tensor([0] * 100 + [1] * 60 + [2] * 10)  # pools of 70, 110 and 160 images
    torch.manual_seed(0)
    anchors = torch.tensor([0, 1, 2, 2, 1, 0] * 10)
    neg = sample_other_class_negatives(labels, anchors, m)
    assert neg.shape == (60, m) and neg.min() >= 0 and neg.max() < 170
    assert not bool((labels[neg] == anchors[:, None]).any())
    pool = (labels[None, :] != anchors[:, None]).sum(1)
    for row, size in zip(neg, pool):
        if size >= m:  # without replacement
            assert len(set(row.tolist())) == m
    # uniform over the pool: every image of another class is drawn by some anchor of class 2 (pool: 0..159)
    drawn = sample_other_class_negatives(labels, torch.full((100,), 2), max(m, 40))
    assert set(drawn.flatten().tolist()) == set(range(160))
    assert not torch.equal(neg[0], neg[5])  # two class-0 anchors draw independently


@pytest.mark.parametrize(
    "pool_size,m",
    [(6, 2), (40, 2), (3, 5)],  # a permutation per anchor (m > pool/8); repeats redrawn (m ≤ pool/8); pool < m
)
def test_negative_draws_are_uniform(pool_size, m):
    # the anchor's class (1) lies between the two others in id order and its 4 rows are scattered: positions
    # that skip its block of the class-sorted split must cover exactly the rows of classes 0 and 2
    labels = torch.tensor([i % 2 * 2 for i in range(pool_size)])  # classes 0 and 2, interleaved
    for row in (0, 2, pool_size // 2 + 2, pool_size + 3):
        labels = torch.cat([labels[:row], torch.tensor([1]), labels[row:]])
    others = [i for i, y in enumerate(labels.tolist()) if y != 1]
    assert len(others) == pool_size
    torch.manual_seed(0)
    draws = sample_other_class_negatives(labels, torch.ones(6000, dtype=torch.long), m)  # (6000, m)
    assert set(draws.flatten().tolist()) == set(others)
    if m > pool_size:  # with replacement: each of the m slots uniform over the pool
        counts = torch.bincount(draws.flatten(), minlength=len(labels))[others].float()
        expected = 6000 * m / pool_size
    else:  # distinct and uniform over the m-subsets of the pool
        assert all(len(set(row)) == m for row in draws.tolist())
        subsets = {}
        for row in draws.tolist():
            subsets[tuple(sorted(row))] = subsets.get(tuple(sorted(row)), 0) + 1
        assert len(subsets) == math.comb(pool_size, m)
        counts = torch.tensor(list(subsets.values()), dtype=torch.float)
        expected = 6000 / math.comb(pool_size, m)
    # chi-square over the cells, far below its mean + 5 sd (a biased sampler, e.g. one never drawing a row or
    # favouring low positions, lands far above it)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(counts) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)


def test_uniform_positions_reach_every_position_of_a_large_pool():
    """Each of a pool's positions is equally likely: with 2^25 positions half of them are odd. (Scaled float32
    draws, 2^24 steps, only ever give even positions there, and on ImageNet-sized pools unequal shares.)"""
    pool = torch.tensor([2**25, 1_281_167])
    draws = _uniform_positions(pool, 4000, torch.Generator().manual_seed(0))  # (2, 4000)
    assert bool((draws >= 0).all()) and bool((draws < pool[:, None]).all())
    odd = (draws[0] % 2).float().mean().item()
    assert 0.45 < odd < 0.55


def test_class_index_rejects_negative_labels_and_unknown_anchor_classes():
    with pytest.raises(ValueError, match="negative class id"):
        sample_other_class_negatives(torch.tensor([0, -1, 1]), torch.tensor([0]), 1)
    with pytest.raises(ValueError, match="does not occur"):
        sample_other_class_negatives(torch.tensor([0, 1, 1]), torch.tensor([2]), 1)
    with pytest.raises(ValueError, match="second class"):
        sample_other_class_negatives(torch.tensor([1, 1]), torch.tensor([1]), 1)


@pytest.mark.parametrize("num_data", [6, 400])  # scores by gathered rows; by one product with the whole bank
def test_contrast_scores_and_their_gradient_equal_the_rows_dotted_one_by_one(num_data):
    g = torch.Generator().manual_seed(3)
    memory = F.normalize(torch.randn(num_data, 4, generator=g), dim=1)
    anchor = F.normalize(torch.randn(3, 4, generator=g), dim=1).requires_grad_()
    idx = torch.randint(0, num_data, (3, 40), generator=g)
    assert (num_data * (4 + 3) <= 3 * 40 * 4) == (num_data == 6)  # the two cases take the two paths
    scores = contrast_scores(anchor, memory, idx, 0.5)
    weights = torch.rand(3, 40, generator=g)
    (scores * weights).sum().backward()
    reference_anchor = anchor.detach().clone().requires_grad_()
    reference = torch.stack([torch.exp(memory[idx[i]] @ reference_anchor[i] / 0.5) for i in range(3)])
    (reference * weights).sum().backward()
    torch.testing.assert_close(scores, reference.detach())
    torch.testing.assert_close(anchor.grad, reference_anchor.grad)


def test_backward_uses_the_banks_as_they_were_before_the_step_updated_them():
    torch.manual_seed(0)
    crd = CRDLoss(feat_dim=3, num_negatives=5, temperature=0.5, momentum=0.5)  # N = 6, 1 + m = 6: product path
    crd.init_memory(torch.tensor([0, 0, 1, 1, 2, 2]))
    idx = torch.tensor([[0, 2, 3, 4, 5, 4], [2, 0, 1, 4, 5, 4]])
    v = F.normalize(torch.randn(2, 3), dim=1).requires_grad_()
    mem_s, mem_t = crd.memory_s.clone(), crd.memory_t.clone()
    crd(v, v, torch.tensor([0, 2]), sample_idx=idx).backward()
    assert not torch.equal(crd.memory_s, mem_s)  # the step updated the banks
    ref_v = v.detach().clone().requires_grad_()
    out_s = torch.stack([torch.exp(mem_t[idx[i]] @ ref_v[i] / 0.5) for i in range(2)])
    out_t = torch.stack([torch.exp(mem_s[idx[i]] @ ref_v[i] / 0.5) for i in range(2)])
    z_s, z_t = float(out_s.mean()) * 6, float(out_t.mean()) * 6
    (crd_nce_loss(out_s / z_s, 6) + crd_nce_loss(out_t / z_t, 6)).backward()
    torch.testing.assert_close(v.grad, ref_v.grad)


def _module(**kw):
    cfg = PCKDConfig("digits_student64", "digits_teacher", num_classes=4, in_channels=1, align_hidden_mult=2)
    module = PCKDModule(cfg, method="crd", teacher_random_init=True, crd_num_negatives=6, crd_feat_dim=8, **kw)
    module.init_crd_memory(torch.arange(12) % 4)
    return module.train()


def test_module_step_combines_ce_kd_crd_and_trains_the_heads():
    torch.manual_seed(0)
    module = _module(w_ce=1.0, w_kd=1.0, w_crd=0.8)
    image, index = torch.rand(4, 1, 1, 8, 8), torch.tensor([0, 5, 6, 11])
    label = index % 4
    out = module.compute_losses(image, label, epoch=1, index=index)
    torch.testing.assert_close(out["loss"], out["ce"] + out["kd"] + 0.8 * out["crd"])
    assert out["crd"] > 0 and out["kd"] > 0 and float(module.crd_loss.z_s) > 0
    out["loss"].backward()
    no_grad = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == [] and all(p.grad is None for p in module.teacher.parameters())
    opt = module.configure_optimizers()["optimizer"]
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    heads = [*module.crd_embed_s.parameters(), *module.crd_embed_t.parameters()]
    assert all(id(p) in opt_params for p in heads) and opt.param_groups[0]["weight_decay"] == 5e-4
    assert not any(id(p) in opt_params for p in module.teacher.parameters())
    # the memory rows of the batch's images were updated (unit norm), the others not yet
    norms = module.crd_loss.memory_s.norm(dim=1)
    assert torch.allclose(norms[index], torch.ones(4)) and not torch.allclose(norms[[1, 2, 3]], torch.ones(3))
    with pytest.raises(ValueError, match="batch\\['index'\\]"):
        module.compute_losses(image, label, epoch=1)
    with pytest.raises(ValueError, match="differs from the training split"):
        module.compute_losses(image, (label + 1) % 4, epoch=1, index=index)


def test_cli_fit_crd_on_tiny_and_resume_restores_memory_and_z(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_cifar100_python(data, num_classes=10, n_train_per_class=4, n_test_per_class=2)
    common = ["--config", "tiny", "--data.data_root", str(data), "--model.method", "crd", "--data.num_views", "1",
              "--model.w_kd", "0.0", "--model.crd_num_negatives", "16", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    cli = main(args=["fit", *common, "--trainer.default_root_dir", str(tmp_path / "a")])
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and float(metrics["train/crd"]) > 0
    crd = cli.model.crd_loss
    assert crd.memory_s.shape == (40, 128) and torch.equal(crd.train_labels, cli.datamodule.train_labels())
    # 2 batches of 4 images were written into both banks (unit rows); the 32 others keep their random init
    for memory in (crd.memory_s, crd.memory_t):
        unit = ((memory.norm(dim=1) - 1).abs() < 1e-5).sum()
        assert int(unit) == 8
    assert float(crd.z_s) > 0 and float(crd.z_t) > 0
    # DDP leaves the banks to CRD's own synchronisation (its names must be the module's buffers, or DDP ignores none)
    ignored = set(cli.model._ddp_params_and_buffers_to_ignore)
    assert (
        ignored == {f"crd_loss.{b}" for b in CRDLoss.synced_buffers}
        and ignored <= dict(cli.model.named_buffers()).keys()
    )

    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    loaded = PCKDModule.load_from_checkpoint(ckpt, map_location="cpu")  # built with empty banks, then loaded
    for name in ("memory_s", "memory_t", "train_labels", "z_s", "z_t"):
        assert torch.equal(getattr(loaded.crd_loss, name), getattr(crd, name))

    seen = []
    forward = CRDLoss.forward

    def spy(self, v_s, v_t, index, sample_idx=None):
        seen.append((self.memory_s.clone(), self.z_s.clone()))
        return forward(self, v_s, v_t, index, sample_idx)

    monkeypatch.setattr(CRDLoss, "forward", spy)
    resumed = main(args=["fit", *common, "--trainer.default_root_dir", str(tmp_path / "b"),
                         "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt)])  # fmt: skip
    assert torch.equal(seen[0][0], crd.memory_s) and torch.equal(seen[0][1], crd.z_s)  # continues, not re-set
    assert not torch.equal(resumed.model.crd_loss.memory_s, crd.memory_s)
