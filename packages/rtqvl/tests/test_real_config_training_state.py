"""The shipped paper configs at the real widths (ViT-B/16 at 12 blocks, BERT-base width; the text side at 2 layers,
which the properties below do not depend on): module modes, momentum copies, what trains, and the optimiser's
groups on the real parameter names (spec §3.2, §3.3)."""

import pytest

from rtqvl.cli import main
from rtqvl.module import param_groups

CASES = ["msrvtt_retrieval", "msrvtt_caption", "msrvtt_qa", "nextqa"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """A vocab.txt of bert-base-uncased's size and special-token layout."""
    root = tmp_path_factory.mktemp("vocab")
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(30522 - len(specials))]
    (root / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    return str(root)


def build(name: str, vocab: str):
    cli = main(
        ["--config", name, "--model.config.text.vocab_path", vocab, "--model.config.pretrained_path", "null",
         "--model.config.text.num_layers", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
         "--trainer.logger", "false"],
        run=False,
    )  # fmt: skip
    return cli.model


@pytest.mark.parametrize("name", CASES)
def test_shipped_config_trains_what_the_recipe_trains(name, vocab):
    module = build(name, vocab)
    model, cfg, hp = module.model, module.config, module.hparams
    assert cfg.vision.hidden_size == 768 and cfg.vision.num_layers == 12 and cfg.vision.grad_checkpoint_last == 4
    # every module trains in train mode, the momentum copies included (LAVIS keeps them inside the trained model)
    assert [n for n, m in module.named_modules() if not m.training] == []
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    momentum = {n for n in params if n.split(".")[0].endswith("_m")}
    assert momentum.isdisjoint(trainable)
    if cfg.task in ("retrieval", "multiple_choice"):
        assert momentum  # momentum distillation (α 0.4)
    assert all(params[n].requires_grad for n in params if n.startswith("visual_encoder."))
    if cfg.task in ("captioning", "qa"):  # tune_crossattn_only: only the decoder's cross-attention trains
        decoder = {n for n in params if n.startswith("text_decoder.")}
        assert {n for n in decoder if n in trainable} == {n for n in decoder if "crossattention" in n} != set()
        assert trainable - decoder - momentum == {n for n in params if not n.startswith("text_decoder.")} - momentum
    else:
        assert trainable == set(params) - momentum

    opt = module.configure_optimizers()
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(params[n]) for n in trainable}
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == hp.weight_decay == 0.04 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.999)
    decayed = {id(p) for p in decay["params"]}
    for n in trainable:
        p = params[n]
        assert (id(p) in decayed) == (p.ndim >= 2 and not any(s in n for s in ("bias", "ln", "bn"))), n
    # the rule reaches the real names: the 2-D weights of attention, MLP, embeddings, projections are decayed
    some_decayed = [n for n in trainable if id(params[n]) in decayed]
    assert any("patch_embedding" in n for n in some_decayed)
    if cfg.task != "captioning":  # captioning trains no text embedding
        assert any("word_embeddings" in n for n in some_decayed)
    assert len(param_groups(model, hp.weight_decay)[1]["params"]) == len(no_decay["params"])
