"""SNP-S3 claim in miniature (spec §8c): significant-semantic strengthening (MSSM + LVWM) vs plain MLM.

Premise: only content words (colour, digit, motion verb) are grounded in the video; captions also carry 6-10 random
function words. Synthetic digits "videos" (T = 4 frames, 32x32): 600 train / 200 test, disjoint digit images.
Significant words are mined with the package's real pipeline and an injected POS tagger, with K_top chosen so that
only content words qualify. The tiny SNP model is pre-trained for the same number of steps under

  (i)  MLM + GVTM         (data.masking = mlm,  use_lvwm = false)
  (ii) MSSM + GVTM + LVWM (data.masking = mssm, use_lvwm = true)

for 3 seeds (no fine-tuning). Reported on the 200 test pairs: cross-modal masked-content-word accuracy (one content
word masked per caption, predicted from caption + video by the cross MLM head) and zero-shot text->video R@1 with
level-2 (cross encoder) and level-1 scores (a caption's ground truth = every test video with the same colour, digit
and motion). Gate: (ii) beats (i) on content-word accuracy by >= 5 points (mean over seeds) and is not worse on
level-2 R@1 (mean(ii) >= mean(i) - 2 points tolerance). Also: SNP vs P3E parameter counts (tiny and paper size).

Run: ``uv run --no-sync python packages/snps3/repro.py`` (``--steps``, ``--seeds``); writes
``packages/snps3/repro_results.json``; exits 1 when the gate fails.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mmzoo.video import normalize

from snps3.data import CaptionProcessor, load_tokenizer
from snps3.masking import MSSMasker
from snps3.metrics import retrieval_metrics
from snps3.models import SNPS3Config, SNPS3Model
from snps3.module import SNPS3Module
from snps3.significant import build_count_table, count_pos, significant_mask
from snps3.synthetic import content_top_k, lexicon_tagger, sample_items, synthetic_vocab

HERE = Path(__file__).parent


def tiny_config(arch: str = "snp") -> SNPS3Config:
    return SNPS3Config(
        arch=arch,
        bert=None,
        vocab_size=len(synthetic_vocab()),
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        visual_encoder="tiny_cnn",
        tiny_cnn_channels=32,
        p3e_cross_layers=1,
    )


def make_batch(items, idx, proc: CaptionProcessor, rng: random.Random) -> dict[str, torch.Tensor]:
    rows = [proc(items[i].captions[0], True, rng, mask=True) for i in idx]
    negs = [proc(items[rng.choice([j for j in range(len(items)) if j != i])].captions[0], True, rng) for i in idx]
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    batch["neg_input_ids"] = torch.stack([n["input_ids"] for n in negs])
    batch["neg_attention_mask"] = torch.stack([n["attention_mask"] for n in negs])
    batch["frames"] = torch.stack([items[i].video for i in idx])  # (B, T, 3, 32, 32)
    return batch


@torch.no_grad()
def evaluate(module: SNPS3Module, test, proc: CaptionProcessor) -> dict[str, float]:
    m = module.model.eval()
    rng = random.Random(0)
    enc = [proc(s.captions[0], False, rng) for s in test]
    ids = torch.stack([e["input_ids"] for e in enc])
    attn = torch.stack([e["attention_mask"] for e in enc])
    frames = torch.stack([s.video for s in test])
    visual = torch.cat([m.encode_visual(frames[a : a + 50]) for a in range(0, len(test), 50)])  # (N, T, D)
    # masked content word: positions 2, 3, 4 hold colour, digit, verb ("[CLS] a colour digit verb ...")
    pos = torch.tensor([2 + (i % 3) for i in range(len(test))])
    masked = ids.clone()
    masked[torch.arange(len(test)), pos] = proc.mask_id
    logits = m.mlm_logits(m.cross(masked, attn, visual).text_hidden, "cross")  # (N, L, V)
    acc = (logits[torch.arange(len(test)), pos].argmax(-1) == ids[torch.arange(len(test)), pos]).float().mean()
    keys = [(s.colour, s.digit, s.motion) for s in test]
    gt = torch.tensor([[a == b for b in keys] for a in keys])
    t = m.text_embed(m.encode_text(ids, attn))
    sim1 = torch.logsumexp(torch.einsum("id,jcd->ijc", t, m.clip_embed(visual)), -1)
    sim2 = module.level2_matrix(ids, attn, visual)  # (N, N) level-2, all N² cross passes
    return {
        "content_word_acc": 100 * acc.item(),
        "R@1_l2": retrieval_metrics(sim2, gt)["R@1"].item(),
        "R@1_l1": retrieval_metrics(sim1, gt)["R@1"].item(),
    }


def run(variant: str, seed: int, steps: int, batch_size: int, train, test, tok, significant, top_k) -> dict:
    torch.manual_seed(seed)
    random.seed(seed)
    rng = random.Random(seed)
    mssm = MSSMasker(significant, [[] for _ in range(len(significant))], tok.mask_token_id)
    proc = CaptionProcessor(tok, 20, "mssm" if variant == "mssm_lvwm" else "mlm", 0.15, mssm, significant)
    module = SNPS3Module(
        tiny_config(),
        task="pretrain",
        with_moco=True,
        moco_queue_size=512,
        moco_momentum=0.99,
        use_lvwm=variant == "mssm_lvwm",
        attentive_mask_prob=0.5,
        lr=1e-3,
        weight_decay=1e-3,
        warmup_iterations=20,
    )
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    module.train()
    t0 = time.time()
    for _ in range(steps):
        idx = rng.sample(range(len(train)), batch_size)
        losses, _ = module.pretrain_losses(make_batch(train, idx, proc, rng), train=True)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
        opt.step()
        sched.step()
    out = evaluate(module, test, proc)
    out["train_s"] = time.time() - t0
    print(f"{variant} seed {seed}: {out}", flush=True)
    return out


def param_counts() -> dict:
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

    tiny = {a: sum(p.numel() for p in SNPS3Model(tiny_config(a)).parameters()) for a in ("snp", "p3e")}
    base = BertConfig()  # bert-base-uncased sizes
    emb = sum(p.numel() for p in BertEmbeddings(base).parameters())
    layer = sum(p.numel() for p in BertLayer(base).parameters())
    return {
        "tiny_snp": tiny["snp"],
        "tiny_p3e": tiny["p3e"],
        "tiny_difference": tiny["p3e"] - tiny["snp"],
        "bert_base_embedding_block": emb,
        "bert_base_layer": layer,
        "paper_size_difference_p3e_minus_snp": emb + 3 * layer,
        "paper_table_II_difference": 45.1e6,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model)")
    p.add_argument("--out", default=str(HERE / "repro_results.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    train = sample_items(600, 100, num_frames=4, size=32, image_range=(0, 1300))
    test = sample_items(200, 200, num_frames=4, size=32, image_range=(1300, 1797))
    for s in train + test:
        s.video = normalize(s.frames, "imagenet")  # (T, 3, 32, 32) float
    vocab = synthetic_vocab()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tok = load_tokenizer(str(Path(tmp) / "vocab.txt"))
    table = build_count_table(count_pos([s.captions[0] for s in train], lexicon_tagger, progress=False), vocab)
    rank = np.asarray(table["rank"])
    top_k = content_top_k(rank)
    significant = significant_mask(rank, top_k)
    results: dict = {
        "config": {
            "steps": a.steps,
            "seeds": a.seeds,
            "batch_size": a.batch_size,
            "train": 600,
            "test": 200,
            "frames": 4,
            "words_top_k": top_k,
            "significant_words": [vocab[i] for i in np.flatnonzero(significant)],
        }
    }
    for variant in ("mlm", "mssm_lvwm"):
        runs = [run(variant, s, a.steps, a.batch_size, train, test, tok, significant, top_k) for s in a.seeds]
        results[variant] = {
            k: {
                "mean": statistics.mean(r[k] for r in runs),
                "std": statistics.pstdev(r[k] for r in runs),
                "runs": [r[k] for r in runs],
            }
            for k in runs[0]
        }
    results["params"] = param_counts()
    acc_gain = results["mssm_lvwm"]["content_word_acc"]["mean"] - results["mlm"]["content_word_acc"]["mean"]
    r1_diff = results["mssm_lvwm"]["R@1_l2"]["mean"] - results["mlm"]["R@1_l2"]["mean"]
    gate = acc_gain >= 5.0 and r1_diff >= -2.0
    results["gate"] = {
        "content_word_acc_gain": acc_gain,
        "R@1_l2_difference": r1_diff,
        "rule": "acc gain >= 5 points and R@1_l2 difference >= -2 points",
        "passed": gate,
    }
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results["gate"], indent=1))
    print(json.dumps(results["params"], indent=1))
    return 0 if gate else 1


if __name__ == "__main__":
    sys.exit(main())
