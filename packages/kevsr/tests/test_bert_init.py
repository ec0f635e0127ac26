"""``model.config.temporal_init_from_bert`` (spec §3.2, option ``temporal_encoder.init_from_bert``): S1's encoder is a
local pre-trained BERT fed the frames as input embeddings (MMBT-style), and its checkpoints load without the folder."""

import shutil

import lightning.pytorch as pl
import pytest
import torch
from mmzoo.testing import assert_started_from_checkpoint, record_state_at_train_start

from kevsr.cli import main
from kevsr.models import KEVSRConfig, bert_cls_token_id
from kevsr.module import KEVSRModule

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(25)]  # 30 tokens, [CLS] = 2
CLS_ID = 2


@pytest.fixture
def bert_dir(tmp_path):
    """A tiny random BERT saved as a local folder (hidden 32, 2 layers, 2 heads, 16 positions) with its vocab.txt."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)  # fmt: skip
    folder = tmp_path / "bert"
    BertModel(cfg).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return folder


def _config(bert_dir, **overrides):
    sizes = dict(dim=32, f2d_dim=6, f3d_dim=4, text_dim=3, region_dim=6, kg_dim=5, num_frames=4, num_regions=2,
                 num_keywords=2, num_level1=2, num_level2=3, temporal_heads=2, region_heads=2)  # fmt: skip
    return KEVSRConfig(**{**sizes, "temporal_init_from_bert": str(bert_dir), **overrides})


def _batch(b=3, t=4):
    g = torch.Generator().manual_seed(1)
    return {"f2d": torch.randn(b, t, 6, generator=g), "f3d": torch.randn(b, t, 4, generator=g),
            "text": torch.randn(b, 3, generator=g)}  # fmt: skip


def _reference_bert(bert_dir):
    from transformers import BertModel

    return BertModel.from_pretrained(bert_dir, local_files_only=True).eval()


def test_encoder_starts_from_the_saved_bert_and_cls_from_its_cls_embedding(tmp_path, bert_dir):
    module = KEVSRModule(_config(bert_dir), streams="temporal")
    stream = module.model.temporal
    ref = _reference_bert(bert_dir).state_dict()
    own = stream.encoder.state_dict()
    assert own and not any("word_embeddings" in k or k.startswith("pooler.") for k in own)
    for key, value in own.items():  # untouched by KEVSRModel.reset_parameters
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(stream.cls.view(-1), ref["embeddings.word_embeddings.weight"][CLS_ID], rtol=0, atol=0)
    assert not hasattr(stream, "pos")  # BERT's own position embeddings
    assert all(m.training for m in stream.modules())  # BERT's dropout active in training, as in the rest of S1

    # a module built in Python: its checkpoint carries BERT's architecture and loads without the folder
    ckpt = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
            "pytorch-lightning_version": pl.__version__}  # fmt: skip
    module.on_save_checkpoint(ckpt)
    assert module.config.temporal_bert_config is None  # the module's own config is left as it was
    torch.save(ckpt, tmp_path / "python.ckpt")
    shutil.rmtree(bert_dir)
    loaded = KEVSRModule.load_from_checkpoint(tmp_path / "python.ckpt").model.temporal
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, stream.state_dict()[key], rtol=0, atol=0, msg=key)


def test_e_t_is_bert_run_on_cls_and_frames_as_input_embeddings(bert_dir):
    module = KEVSRModule(_config(bert_dir), streams="temporal").eval()
    stream, parent = module.model.temporal, module.model.parent_index
    batch = _batch()
    ref = _reference_bert(bert_dir)
    with torch.no_grad():
        f_g = stream.refine(batch["f2d"], batch["f3d"], batch["text"])  # (B, T, D)
        cls = ref.embeddings.word_embeddings.weight[CLS_ID].expand(f_g.shape[0], 1, -1)
        e_t = ref(inputs_embeds=torch.cat([cls, f_g], dim=1)).last_hidden_state[:, 0]  # (B, D)
        expected = stream.heads(e_t, parent)
        out = stream(batch, parent)
    for key in ("level1", "level2"):
        torch.testing.assert_close(out[key], expected[key])
    # training: every trainable parameter (BERT's included) gets a gradient, as DDP requires
    module.train()
    out = stream(batch, parent)
    (out["level1"].sum() + out["level2"].sum()).backward()
    missing = [n for n, p in stream.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_cls_token_id_from_config_then_tokenizer_then_101(tmp_path, bert_dir):
    from transformers import BertConfig

    assert bert_cls_token_id(bert_dir, BertConfig()) == CLS_ID  # vocab.txt
    assert bert_cls_token_id(bert_dir, BertConfig(cls_token_id=7)) == 7  # config.json's cls_token_id wins
    assert bert_cls_token_id(tmp_path / "no_tokenizer", BertConfig()) == 101


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"dim": 16, "temporal_heads": 2}, ValueError, r"model.config.dim=16 must equal the hidden_size=32"),
        ({"num_frames": 16}, ValueError, r"num_frames=16 \+ 1 \(\[CLS\]\) exceeds the max_position_embeddings=16"),
        ({"temporal_init_from_bert": "no/such/bert"}, FileNotFoundError, r"temporal_init_from_bert='no/such/bert'"),
    ],
)
def test_bert_errors_name_the_keys(bert_dir, overrides, error, message):
    with pytest.raises(error, match=message):
        KEVSRModule(_config(bert_dir, **overrides), streams="temporal")


def test_cli_fit_then_checkpoint_loads_without_the_bert_folder(tmp_path, bert_dir, monkeypatch):
    data = [
        "--config", "tiny", "--data.data_root", str(tmp_path / "data"),
        "--data.kg_path", str(tmp_path / "data" / "kg.txt.gz"), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    fit = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    cli = main(args=["fit", *data, *fit, "--model.config.temporal_init_from_bert", str(bert_dir)])
    fitted = cli.model.eval()
    trained = fitted.model.temporal.encoder.state_dict()
    initial = _reference_bert(bert_dir).state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in trained.items())  # training moved BERT's weights
    batch = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        expected = fitted.predict_step(batch, 0)["level2"]

    shutil.rmtree(bert_dir)  # the checkpoint holds BERT's architecture and weights
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    loaded = KEVSRModule.load_from_checkpoint(ckpt).eval()
    assert loaded.config.temporal_init_from_bert == str(bert_dir) and loaded.config.temporal_bert_config
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_step(batch, 0)["level2"], expected, rtol=0, atol=0)

    # S1-only inference (spec §3.5): S2 dropped from the state dict; no forward pass before the weights are loaded
    s1_only = KEVSRModule(loaded.config, streams="temporal").eval()
    with pytest.raises(RuntimeError, match="built without weights"):
        s1_only.predict_step(batch, 0)
    state = {k: v for k, v in torch.load(ckpt, weights_only=False)["state_dict"].items() if ".nontemporal." not in k}
    s1_only.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(s1_only.predict_step(batch, 0)["level2"], expected, rtol=0, atol=0)

    test = main(args=["test", *data, "--ckpt_path", str(ckpt), "--trainer.limit_test_batches", "1"])
    assert torch.isfinite(test.trainer.callback_metrics["test/f1_l2"])
    for key, value in test.model.model.temporal.encoder.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)

    # resuming rebuilds the encoder from the checkpoint too, and trains on from its weights
    at_train_start = record_state_at_train_start(monkeypatch, KEVSRModule)
    fit[1] = "2"  # --trainer.max_epochs
    resumed = main(
        args=["fit", *data, *fit, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path / "r")]
    )
    assert_started_from_checkpoint(at_train_start, ckpt)
    assert resumed.trainer.global_step == 4 and torch.isfinite(resumed.trainer.callback_metrics["train/loss_t"])
