import math

import pytest
import torch
from mmzoo.testing import repeated_index_reads

from asdmllm.cli import main
from asdmllm.data import SocialCounterfactualsDataset, collate, make_socialcounterfactuals
from asdmllm.module import ASDModule, DebiasConfig


def test_fit_validate_test_tiny(tmp_path):
    data = str(tmp_path / "data")
    common = ["--config", "tiny", "--data.data_root", data, "--trainer.default_root_dir", str(tmp_path)]
    cli = main(args=["fit", *common])
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])) and "val/bias/socialcounterfactuals/max_skew" in metrics
    sampler = cli.datamodule.train_sampler
    assert sampler.indices is not None  # ASD installed a resampled list
    assert cli.model.sample_skew is not None and cli.model.sample_skew.shape == (len(cli.datamodule.train_set),)
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    cli = main(args=["test", *common, "--ckpt_path", ckpt])
    m = cli.trainer.callback_metrics
    for key in (
        "test/bias/socialcounterfactuals/race/max_skew",
        "test/bias/socialcounterfactuals/min_skew",
        "test/bias/fairface/max_skew",
        "test/concept_acc",
    ):
        assert key in m and math.isfinite(float(m[key])), key
    assert (
        float(m["test/bias/socialcounterfactuals/max_skew"])
        >= 0
        >= float(m["test/bias/socialcounterfactuals/min_skew"])
    )
    assert "val/loss" in metrics and "test/loss" in m


def test_loss_falls_on_repeated_batch(tmp_path):
    torch.manual_seed(0)
    root = make_socialcounterfactuals(tmp_path, ["nurse", "chef"], ["White", "Black"], ["male", "female"], 4, 32)
    ds = SocialCounterfactualsDataset(root, "all", image_size=32)
    batch = collate([ds[i] for i in range(8)])
    module = ASDModule(debias=DebiasConfig("ft"))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    skew = torch.linspace(-1, 1, 8)
    module.loss_fn.enabled = True  # SFLoss path with fixed Skew
    losses = []
    with repeated_index_reads() as repeated:  # fixed-order gradient sums: two runs give the same weights
        for _ in range(8):
            inputs = module.mllm.build_inputs(batch["instruction"], batch["answer"])
            logits = module.mllm(batch["image"], inputs["input_ids"], inputs["attention_mask"])
            loss = module.loss_fn(logits, inputs["labels"], skew)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert repeated == []
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]


def test_vision_tower_frozen_and_lora():
    from asdmllm.models import MLLMConfig, MultimodalLLM

    m = MultimodalLLM(MLLMConfig())
    assert not any(p.requires_grad for p in m.model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in m.model.model.multi_modal_projector.parameters())
    lora = MultimodalLLM(MLLMConfig(lora=True, lora_r=2))
    names = [n for n, p in lora.model.model.language_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_missing_pretrained_names_key(tmp_path):
    from asdmllm.models import MLLMConfig, MultimodalLLM

    with pytest.raises(FileNotFoundError, match="model.mllm.pretrained"):
        MultimodalLLM(MLLMConfig(pretrained=str(tmp_path / "llava-missing")))


def test_general_eval_hook_vqa_and_mc(tmp_path):
    import json

    from PIL import Image

    from asdmllm.module import GeneralEvalConfig

    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "a.png")
    lines = [
        {"image": "a.png", "question": "Color?", "answers": ["red"] * 10},
        {"image": "a.png", "question": "Color?", "options": {"A": "red", "B": "blue"}, "answer": "A"},
    ]
    (tmp_path / "general.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    module = ASDModule(general_eval=GeneralEvalConfig(file=str(tmp_path / "general.jsonl"), max_new_tokens=3))
    out = module.evaluate_general()
    assert set(out) == {"vqa_acc", "mc_acc"} and all(0.0 <= v <= 100.0 for v in out.values())
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png", "question": "?"}))
    module.general_eval.file = str(tmp_path / "bad.jsonl")
    with pytest.raises(KeyError, match="answers"):
        module.evaluate_general()
    # faults name the file's own line (blank lines counted) and come before any answer is generated
    generated = []
    module._general_answers = lambda records, *args: generated.append(records) or ["A"] * len(records)
    good = json.dumps(lines[0])
    for text, error, message in (
        (f"{good}\n\n{{oops\n", ValueError, r"model\.general_eval\.file '.*bad\.jsonl' line 3 is not valid JSON"),
        (f'{good}\n\n"a.png question"\n', KeyError, r"bad\.jsonl: line 3 needs a JSON object with 'image'"),
        (
            f"{good}\n\n{json.dumps({'image': 'a.png', 'question': '?'})}\n",
            KeyError,
            r"bad\.jsonl: line 3 needs 'answers'",
        ),
    ):
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(error, match=message):
            module.evaluate_general()
    assert generated == []


@pytest.mark.parametrize("epoch_length", ["resampled", "nominal"])
def test_epoch_length_follows_resampled_list(tmp_path, monkeypatch, epoch_length):
    """Spec §3.4: the epoch is the resampled list (its length varies per epoch); ``nominal`` keeps len(train set)."""
    import lightning.pytorch as pl

    import asdmllm.module as module_lib
    from asdmllm.data import DebiasDataModule, DemoDataConfig
    from asdmllm.module import SkewConfig

    lengths = iter([16, 24])  # the resampled list of epoch 0 and epoch 1
    monkeypatch.setattr(module_lib, "bias_aware_resample", lambda skew, t1, t2, g: torch.arange(next(lengths)) % 5)
    dm = DebiasDataModule(
        data_root=str(tmp_path / "data"),
        image_size=32,
        batch_size=8,
        eval_batch_size=64,
        num_workers=0,
        generate_demo_data=True,
        demo=DemoDataConfig(n_sets=3),
    )
    module = ASDModule(debias=DebiasConfig("asd", epoch_length=epoch_length), skew=SkewConfig(scorer="answer_logprob"))
    seen: list[list[int]] = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append([trainer.num_training_batches, 0])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[-1][1] += 1
            assert int(batch["index"].max()) < 5 or epoch_length == "nominal"

    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    trainer.fit(module, dm)
    nominal = len(dm.train_set) // 8
    expected = [[2, 2], [3, 3]] if epoch_length == "resampled" else [[nominal, nominal]] * 2
    assert seen == expected
    assert module._nominal_total_steps() == 2 * nominal  # the LR schedule counts nominal epochs (spec §3.4)


def test_resampled_schedule_spans_max_steps_when_epochs_are_unbounded(tmp_path):
    """``trainer.max_epochs: -1`` with ``trainer.max_steps``: the fit ends after max_steps optimizer steps, so the
    cosine schedule of a resampled run spans them (not one nominal epoch, after which the LR would stay at 0)."""
    data = str(tmp_path / "data")
    cli = main(
        args=[
            "fit",
            "--config",
            "tiny",
            "--data.data_root",
            data,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.max_epochs",
            "-1",
            "--trainer.max_steps",
            "6",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--model.scheduler",
            "cosine",
        ]
    )
    module, trainer = cli.model, cli.trainer
    assert trainer.global_step == 6
    assert module._schedule_total == 6
    assert not module._warned_schedule_end  # no step ran past the schedule's end


def test_general_eval_records_that_would_score_silently_wrong_are_named_before_generating(tmp_path):
    import json

    from PIL import Image

    from asdmllm.module import GeneralEvalConfig

    Image.new("L", (1, 1), 7).save(tmp_path / "a.png")  # a one-pixel grayscale image is a legal image
    module = ASDModule(general_eval=GeneralEvalConfig(file=str(tmp_path / "g.jsonl"), max_new_tokens=3))
    generated = []
    module._general_answers = lambda records, *args: generated.append(records) or ["A"] * len(records)
    good = {"image": "a.png", "question": "Qu'est-ce que c'est ? 颜色", "answers": ["red"] * 10}
    mc = {"image": "a.png", "question": "", "options": {"A": "red", "B": "blue"}, "answer": "b"}
    for bad, message in (
        ({**good, "answers": "red"}, r"line 2: 'answers' must be a non-empty list"),
        ({**good, "answers": []}, r"line 2: 'answers' must be a non-empty list"),
        ({**mc, "answer": "blue"}, r"line 2: 'answer' 'blue' is not one of the option letters \['A', 'B'\]"),
        ({**mc, "answer": "E"}, r"line 2: 'answer' 'E' is not one of the option letters"),
        ({"image": "a.png", "question": "?", "answer": "A"}, r"line 2: a multiple-choice record needs 'options'"),
        ({**good, "question": None}, r"line 2: 'question' must be a string"),
        (
            {**good, "image": "missing.png"},
            r"line 2: image 'missing.png' is not a file.*model\.general_eval\.image_root",
        ),
    ):
        (tmp_path / "g.jsonl").write_text(f"{json.dumps(good)}\n{json.dumps(bad)}\n")
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            module.evaluate_general()
    assert generated == []
    (tmp_path / "g.jsonl").write_text(f"{json.dumps(good)}\n{json.dumps(mc)}\n")
    out = module.evaluate_general()  # empty and non-ASCII questions, lower-case answer letters are fine
    assert out["mc_acc"] == 0.0 and out["vqa_acc"] == 0.0 and len(generated) == 1
