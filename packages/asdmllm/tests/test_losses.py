import math

import pytest
import torch

from asdmllm.losses import SocialFairnessLoss, autoregressive_loss, social_fairness_loss, token_log_likelihood
from asdmllm.models import MLLMConfig, MultimodalLLM


def _plain_ar(logits, labels, reduction):
    out = []
    for b in range(logits.shape[0]):
        terms = []
        for t in range(1, logits.shape[1]):
            if labels[b, t] != -100:
                terms.append(-torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]])
        total = sum(terms)
        out.append(total / len(terms) if reduction == "mean" else total)
    return torch.stack(out)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_autoregressive_loss_matches_loop(reduction):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.full((3, 7), -100)
    labels[0, 4:] = torch.tensor([1, 2, 3])
    labels[1, 6] = 5
    labels[2, 2:5] = torch.tensor([7, 8, 9])
    torch.testing.assert_close(autoregressive_loss(logits, labels, reduction), _plain_ar(logits, labels, reduction))


def test_no_supervised_tokens_raises():
    with pytest.raises(ValueError, match="no supervised"):
        token_log_likelihood(torch.randn(1, 4, 5), torch.full((1, 4), -100))


def test_unknown_token_reduction_raises():  # it used to fall through to the sum
    with pytest.raises(ValueError, match="'avg'"):
        autoregressive_loss(torch.randn(1, 4, 5), torch.tensor([[-100, 1, 2, 3]]), "avg")


@pytest.mark.parametrize("key,value", [("token_reduction", "avg"), ("epoch_length", "nomimal"), ("method", "asdd")])
def test_debias_config_refuses_unknown_choices(key, value):
    from asdmllm.module import DebiasConfig

    with pytest.raises(ValueError, match=f"model.debias.{key}='{value}'"):
        DebiasConfig(**{key: value})


@pytest.mark.parametrize(
    "which,key,value",
    [
        ("skew", "scorer", "yes"),
        ("skew", "mode", "top_k"),
        ("skew", "per_sample", "maxabs"),
        ("mllm", "arch", "qwen2vl"),
    ],
)
def test_skew_and_mllm_configs_refuse_unknown_choices(which, key, value):
    """Built in Python (no CLI type check), an unknown scorer used to fall through to answer_logprob and an unknown
    arch to a LLaVA."""
    from asdmllm.module import SkewConfig

    config = SkewConfig if which == "skew" else MLLMConfig
    with pytest.raises(ValueError, match=f"model.{which}.{key}='{value}'"):
        config(**{key: value})


def test_sfloss_equation_and_zero_skew():
    per_sample = torch.tensor([1.0, 2.0, 0.5, 3.0])
    skew = torch.tensor([0.5, -1.0, 0.0, 2.0])
    expected = sum(math.exp(-s) * l for s, l in zip(skew.tolist(), per_sample.tolist(), strict=True)) / 4
    assert social_fairness_loss(per_sample, skew).item() == pytest.approx(expected, rel=1e-6)
    assert social_fairness_loss(per_sample, torch.zeros(4)).item() == pytest.approx(per_sample.mean().item())
    w = torch.exp(-skew)
    normed = (w / w.mean() * per_sample).mean()
    assert social_fairness_loss(per_sample, skew, normalize_weights=True).item() == pytest.approx(
        normed.item(), rel=1e-6
    )


def test_sfloss_hand_worked_from_logits():
    """Eq. of spec §3.5 by hand: two one-token answers over a 2-word vocabulary.

    Sample 1: equal logits → L_1 = ln 2; Skew = +ln 2 → weight 1/2. Sample 2: target logit ln 3 above the other →
    p = 3/4, L_2 = ln(4/3); Skew = −ln 2 → weight 2. L_fair = (½·ln 2 + 2·ln(4/3)) / 2 = ¼ ln 2 + ln(4/3).
    """
    logits = torch.zeros(2, 2, 2)
    logits[1, 0, 1] = math.log(3.0)  # position 0 predicts the answer token at position 1 (token id 1)
    labels = torch.tensor([[-100, 1], [-100, 1]])
    skew = torch.tensor([math.log(2.0), -math.log(2.0)])
    out = SocialFairnessLoss(enabled=True)(logits, labels, skew)
    assert out["loss"].item() == pytest.approx(0.25 * math.log(2.0) + math.log(4.0 / 3.0), rel=1e-6)
    assert out["loss_ar"].item() == pytest.approx((math.log(2.0) + math.log(4.0 / 3.0)) / 2, rel=1e-6)
    assert out["mean_weight"].item() == pytest.approx(1.25, rel=1e-6)
    # FT (SFLoss off) ignores the Skew: the plain mean
    assert SocialFairnessLoss(enabled=False)(logits, labels, skew)["loss"].item() == pytest.approx(
        (math.log(2.0) + math.log(4.0 / 3.0)) / 2, rel=1e-6
    )


def test_sfloss_gradients_only_through_ce():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.full((2, 5), -100)
    labels[:, 3:] = 2
    skew = torch.tensor([0.3, -0.7], requires_grad=True)
    out = SocialFairnessLoss(enabled=True)(logits, labels, skew)
    out["loss"].backward()
    assert skew.grad is None and logits.grad is not None and logits.grad.abs().sum() > 0
    # all-zero Skew = the model's own mean loss (token mean per sample, then batch mean)
    plain = SocialFairnessLoss(enabled=True)(logits, labels, torch.zeros(2))["loss"]
    torch.testing.assert_close(plain, autoregressive_loss(logits, labels).mean())
    off = SocialFairnessLoss(enabled=False)(logits, labels, skew)["loss"]
    torch.testing.assert_close(off, autoregressive_loss(logits, labels).mean())


def test_sfloss_shape_and_empty_errors():
    with pytest.raises(ValueError, match="must both be"):
        social_fairness_loss(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="empty"):
        social_fairness_loss(torch.ones(0), torch.ones(0))


@pytest.fixture(scope="module")
def mllm():
    torch.manual_seed(0)
    return MultimodalLLM(MLLMConfig())


def test_label_masking_and_image_tokens(mllm):
    assert mllm.num_image_tokens == (32 // 8) ** 2
    inputs = mllm.build_inputs(["What is the occupation of the person in the image?", "Q?"], ["plumber", "a"])
    ids, labels, mask = inputs["input_ids"], inputs["labels"], inputs["attention_mask"]
    for b, answer in enumerate(["plumber", "a"]):
        assert int((ids[b] == mllm.image_token_id).sum()) == 16
        sup = labels[b][labels[b] != -100].tolist()
        assert sup == mllm._encode(" " + answer) + [mllm.tokenizer.eos_token_id]  # only answer + EOS supervised
        start = int(inputs["prompt_lengths"][b])
        assert (labels[b, :start] == -100).all()
        assert (labels[b][mask[b] == 0] == -100).all()
        assert (labels[b][ids[b] == mllm.image_token_id] == -100).all()


def test_yes_no_scorer_renormalised(mllm):
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        s = mllm.yes_no_scores(images, [["nurse", "chef"], ["pilot", "plumber"]])
        inputs = mllm.build_inputs([mllm.yes_no_prompt(mllm.config.yes_no_template, "chef")], ["Yes"])
        logits = mllm(images[:1], inputs["input_ids"], inputs["attention_mask"])
    assert s.shape == (2, 2) and ((s > 0) & (s < 1)).all()
    pos = int(inputs["prompt_lengths"][0])  # the answer starts with answer_prefix's " "; its logits predict Y / N
    assert inputs["labels"][0, pos].item() == mllm._encode(" ")[0] and inputs["labels"][0, pos + 1] in mllm.yes_ids
    p = logits[0, pos].softmax(-1)
    yes, no = p[mllm.yes_ids].sum(), p[mllm.no_ids].sum()
    assert s[0, 1].item() == pytest.approx((yes / (yes + no)).item(), abs=1e-5)
    assert (yes / (yes + no) + no / (yes + no)).item() == pytest.approx(1.0)


def test_answer_logprob_scorer(mllm):
    images = torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        s = mllm.answer_logprob_scores(images, [["Q?", "Q?"]], [["chef", "nurse"]])
        inputs = mllm.build_inputs(["Q?"], ["chef"])
        logits = mllm(images, inputs["input_ids"], inputs["attention_mask"])
    labels = inputs["labels"].clone()
    start = int(inputs["prompt_lengths"][0])
    assert labels[0, start] == mllm._encode(" ")[0]  # training supervises answer_prefix's " " too
    labels[0, start] = -100  # the concept phrase only: not the prefix's " " ...
    labels[labels == mllm.tokenizer.eos_token_id] = -100  # ... nor EOS
    assert mllm.tokenizer.decode(labels[labels != -100]) == "chef"
    assert s.shape == (1, 2) and (s < 0).all()
    assert s[0, 0].item() == pytest.approx(token_log_likelihood(logits, labels).item(), abs=1e-5)


def test_wrong_image_size_message(mllm):
    with pytest.raises(ValueError, match="data.image_size=32"):
        mllm.normalize_images(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_yes_no_scorer_when_another_token_takes_the_mass(mllm, monkeypatch):
    """A next-token distribution dominated by a third token (logit gap 60: p(Yes), p(No) ~ 1e-26) keeps the same
    Yes/No ratio as the unshifted logits; the ratio depends only on the Yes and No logits."""
    images = torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        ref = mllm.yes_no_scores(images, [["chef", "nurse"]])
    other = next(i for i in range(1000) if i not in mllm.yes_ids + mllm.no_ids)
    forward = mllm.forward

    def dominated(*args, **kwargs):
        out = forward(*args, **kwargs).float().clone()
        out[..., other] += 60.0
        return out

    monkeypatch.setattr(mllm, "forward", dominated)
    with torch.no_grad():
        s = mllm.yes_no_scores(images, [["chef", "nurse"]])
    torch.testing.assert_close(s, ref, atol=1e-5, rtol=0)


def test_sfloss_not_finite_names_the_clip_key():
    logits, labels = torch.zeros(1, 2, 2), torch.tensor([[-100, 1]])
    with pytest.raises(FloatingPointError, match=r"model\.skew\.clip"):
        SocialFairnessLoss(enabled=True)(logits, labels, torch.tensor([-1e4]))
