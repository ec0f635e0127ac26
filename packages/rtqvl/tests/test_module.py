"""The LightningModule end to end: CLI fit/validate/test on tiny.yaml, every task head's steps, the optimiser."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from mmzoo.testing import repeated_index_reads
from rtqvl_testlib import count_rows, keep_metric_inputs, quiet_trainer, tiny_config

from rtqvl.cli import main
from rtqvl.module import RTQModule, linear_warmup_cosine_lr, param_groups


def test_cli_fit_validate_test_tiny(tmp_path):
    common = [
        "--config",
        "tiny",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger",
        "false",
        "--data.data_root",
        str(tmp_path / "data"),
        "--data.demo_num_train",
        "17",
        "--data.demo_num_test",
        "8",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
    ]
    cli = main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    m = cli.trainer.callback_metrics
    assert math.isfinite(float(m["train/loss"])) and "val/t2v_R@1" in m and "val/score" in m
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("model.visual_encoder_m.") for k in state)  # momentum encoders are saved
    assert "model.video_queue" in state
    cli = main(["test", *common, "--ckpt_path", str(ckpt)])
    m = cli.trainer.callback_metrics
    for k in ("test/t2v_R@1", "test/t2v_R@5", "test/t2v_MdR", "test/v2t_R@1", "test/v2t_MnR"):
        assert k in m


def _retrieval_batch(b=4):
    g = torch.Generator().manual_seed(0)
    caps = [
        "red square on the left then blue square on the top",
        "green square on the right",
        "white square then yellow square",
        "blue square on the bottom",
    ]
    return {"video": torch.randn(b, 4, 3, 32, 32, generator=g), "caption": caps[:b], "video_index": torch.arange(b)}


def _quiet(mod):
    mod.log = lambda *a, **k: None
    return mod


def test_retrieval_loss_falls_on_a_repeated_batch():
    mod = _quiet(RTQModule(tiny_config(queue_size=8), lr=1e-3))
    opt = torch.optim.AdamW(mod.parameters(), lr=1e-3)
    batch = _retrieval_batch()
    losses = []
    for _ in range(4):
        loss = mod.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("task", ["captioning", "qa", "multiple_choice"])
def test_generation_and_choice_heads_train_and_evaluate(task):
    # all decoder weights train here so that 4 steps visibly lower the loss; the default freezing is checked below
    mod = _quiet(RTQModule(tiny_config(task, tune_crossattn_only=False), lr=1e-3))
    video = torch.randn(2, 4, 3, 32, 32)
    if task == "captioning":
        batch = {
            "video": video,
            "caption": ["a red square", "a blue square then a dog"],
            "references": [["a red square"], ["a blue square"]],
            "index": torch.arange(2),
        }
    elif task == "qa":
        batch = {
            "video": video,
            "question": ["what is red", "what comes first"],
            "answer": ["square", "blue"],
            "weight": torch.ones(2),
            "index": torch.arange(2),
        }
    else:
        cands = [[f"question what is red answer {c}" for c in ("red", "blue", "green", "white", "dog")]] * 2
        batch = {
            "video": video,
            "candidates": cands,
            "answer": torch.tensor([0, 3]),
            "type": ["DC", "TN"],
            "index": torch.arange(2),
        }
    opt = torch.optim.AdamW([p for p in mod.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        loss = mod.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    mod.eval()
    with torch.no_grad():
        mod.validation_step(batch, 0)
    values = mod.val_metric.compute()
    if task == "captioning":
        assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(values)
        default = RTQModule(tiny_config(task)).model.text_decoder
        frozen = [n for n, p in default.named_parameters() if not p.requires_grad]
        assert frozen and all("crossattention" not in n for n in frozen)  # only cross-attention trains
    elif task == "qa":
        assert 0.0 <= float(values) <= 100.0
    else:
        assert "acc" in values


def test_lr_schedule_values():
    kw = dict(peak=1e-4, warmup_start=1e-5, warmup_steps=10, min_lr=0.0, max_epochs=4)
    assert linear_warmup_cosine_lr(0, 0, **kw) == pytest.approx(1e-5)
    assert linear_warmup_cosine_lr(0, 5, **kw) == pytest.approx(5.5e-5)
    assert linear_warmup_cosine_lr(0, 50, **kw) == pytest.approx(1e-4)  # stays at peak for the rest of epoch 0
    assert linear_warmup_cosine_lr(2, 0, **kw) == pytest.approx(0.5e-4)
    assert linear_warmup_cosine_lr(1, 3, **kw) == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_weight_decay_groups():
    net = torch.nn.Module()
    net.fc = torch.nn.Linear(2, 2)
    net.ln = torch.nn.LayerNorm(2)
    net.frozen = torch.nn.Linear(2, 2)
    net.frozen.weight.requires_grad_(False)
    decay, no_decay = param_groups(net, 0.04)
    assert [id(p) for p in decay["params"]] == [id(net.fc.weight)]
    assert {id(p) for p in no_decay["params"]} == {
        id(net.fc.bias),
        id(net.ln.weight),
        id(net.ln.bias),
        id(net.frozen.bias),
    }
    assert decay["weight_decay"] == 0.04 and no_decay["weight_decay"] == 0.0


def test_nan_loss_is_an_error():
    mod = _quiet(RTQModule(tiny_config()))
    with pytest.raises(FloatingPointError, match="train/loss"):
        mod._check_finite(torch.tensor(float("nan")), "train/loss")
    assert mod.training_step(None, 0) is None  # an all-skipped batch is skipped


def test_retrieval_evaluation_on_two_processes_equals_one_process(two_process_results):
    # each rank: retrieval_eval_worker (DistributedSampler padding; a rank without batches); re-ranking is sharded
    # over the ranks, and the gathered score matrix must not be synced a second time by the metric
    from rtqvl_testlib import retrieval_eval_logs

    single = retrieval_eval_logs(0, 1, [[[0, 1, 2], [3, 4]]])
    assert {"val/t2v_R@1", "val/v2t_R@1", "val/v2t_MnR", "val/score"} <= set(single)
    for rank in (r["retrieval_eval"] for r in two_process_results):
        for logs in rank[:2]:  # padded shards and a rank without batches
            assert logs.keys() == single.keys()
            for k, v in single.items():
                assert logs[k] == pytest.approx(v, abs=1e-4), k


def test_retrieval_re_ranking_is_split_by_the_rank_holding_each_video(two_process_results):
    # every rank keeps only the tokens of the videos it encoded (3 each: rank 1's third is video 0 again) and scores
    # the ITM pairs of the videos it holds: together the ranks score each candidate pair exactly once
    from rtqvl_testlib import RET_OWNER, retrieval_eval_logs

    single: dict = {}
    retrieval_eval_logs(0, 1, [[[0, 2], [4], [1, 3]]], seen=single)
    ranks = [r["retrieval_eval"][2] for r in two_process_results]
    assert [r["store_rows"] for r in ranks] == [3, 3]
    assert [r["videos_encoded"] for r in ranks] == [3, 3]  # one encoding per video, not per caption (4 and 6)
    assert single["store_rows"] == single["videos_encoded"] == 5  # 5 videos, 8 captions
    assert single["gt"].tolist() == RET_OWNER and all(r["gt"].tolist() == RET_OWNER for r in ranks)
    assert all(r["itm_pairs"] > 0 for r in ranks)
    assert sum(r["itm_pairs"] for r in ranks) == single["itm_pairs"]
    for r in ranks:
        torch.testing.assert_close(r["t2v"], single["t2v"], rtol=0, atol=1e-5)
        torch.testing.assert_close(r["v2t"], single["v2t"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", ["captioning", "qa", "multiple_choice"])
def test_generation_and_choice_evaluation_on_two_processes_equals_one_process(task, two_process_results):
    # 5 items over 2 ranks: DistributedSampler pads rank 1 with a repeat of item 0, the only item the fake model
    # gets right; the metric must count it once, as one process does
    from rtqvl_testlib import _ANSWERS, _PREDS, _QA_PREDS, _REFS, GEN_SHARDS, gen_eval_logs

    from rtqvl.metrics import caption_metrics, qa_accuracy

    single = gen_eval_logs(task, 0, 1, [[[0, 1, 2], [3, 4]]])
    assert GEN_SHARDS[1][-1] == [0]  # the padding repeat is there
    if task == "captioning":  # counting the repeat would change the metric
        padded = caption_metrics([*_PREDS, _PREDS[0]], [[r] for r in [*_REFS, _REFS[0]]], "python")
        assert padded["CIDEr"] != pytest.approx(single["val/CIDEr"])
    elif task == "qa":
        assert single["val/acc"] == pytest.approx(20.0)
        assert qa_accuracy([*_QA_PREDS, _QA_PREDS[0]], [*_ANSWERS, _ANSWERS[0]]) == pytest.approx(100 / 3)
    else:
        assert single["val/acc"] == pytest.approx(20.0) and single["val/acc_C"] == pytest.approx(50.0)
    for rank in two_process_results:
        logs = rank["gen_eval"][task]
        assert logs.keys() == single.keys()
        for k, v in single.items():
            assert logs[k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.parametrize("store", ["pinned", "cpu", "device"])
def test_retrieval_token_store_locations_give_the_same_scores(store):
    # the store location changes where the tokens wait, not the scores; the reference is the previous layout:
    # every video's tokens in one tensor on the model's device, all pairs re-ranked from it
    from rtqvl_testlib import RET_CAPTIONS, RET_OWNER, retrieval_eval_batch, retrieval_eval_logs

    from rtqvl.metrics import retrieval_metrics

    seen: dict = {}
    logs = retrieval_eval_logs(0, 1, [[[0, 1, 2], [3, 4]]], store=store, seen=seen)
    ref: dict = {}
    assert logs == retrieval_eval_logs(0, 1, [[[0, 1, 2], [3, 4]]], store="device", seen=ref)
    assert torch.equal(seen["t2v"], ref["t2v"]) and torch.equal(seen["v2t"], ref["v2t"])

    torch.manual_seed(0)
    mod = RTQModule(tiny_config(queue_size=8, k_test=3)).eval()
    m = mod.model
    with torch.no_grad():
        videos = retrieval_eval_batch([0, 1, 2, 3, 4])["video"]
        ids, mask = m.tokenize(RET_CAPTIONS, "cpu", pad_to_max=True)  # the 8 captions in file order
        v_feat, tokens = m.encode_video(videos)
        sim = m.encode_text(ids, mask) @ v_feat.T
        t2v, v2t = m.rerank(sim, tokens, ids, mask, 3)
    torch.testing.assert_close(seen["t2v"], t2v, rtol=0, atol=1e-5)
    torch.testing.assert_close(seen["v2t"], v2t, rtol=0, atol=1e-5)
    assert seen["gt"].tolist() == RET_OWNER
    ref = retrieval_metrics(t2v, torch.tensor(RET_OWNER), v2t)
    for k, v in ref.items():
        assert logs[f"val/{k}"] == pytest.approx(v, abs=1e-9), k
    # the per-video and per-text records hold features and ids (≤ 2-D), not the (N, M, D) token sequences
    assert seen["eval_store_max_dim"] <= 2 and seen["store_rows"] == 5
    assert seen["store_devices"] == {"cpu"}  # host memory (the model is on the CPU here as well)


@pytest.mark.parametrize(
    "vision",
    [{}, {"temporal_modeling": "none"}, {"temporal_modeling": "divided_attention"}, {"refine": "spectral"}],
)
def test_every_trainable_parameter_gets_a_gradient(vision):
    # DDP (strategy auto: find_unused_parameters=False) stops at the second step on a trainable parameter that
    # never receives a gradient, e.g. the RQ ablation's temporal embedding
    from rtqvl_testlib import tiny_vision

    torch.manual_seed(0)
    mod = _quiet(RTQModule(tiny_config(vision=tiny_vision(**vision), queue_size=8)))
    with repeated_index_reads() as repeated:  # a video drawn as several texts' hard negative: fixed-order sums
        loss = mod.training_step(_retrieval_batch(), 0)
    assert repeated == []
    loss.backward()
    assert [n for n, p in mod.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.fixture(scope="module")
def predict_root(tmp_path_factory):
    """One synthetic video store (6 test clips) annotated for every task in the official formats."""
    import json
    import shutil

    from rtqvl.synthetic import write_order_dataset

    root = write_order_dataset(tmp_path_factory.mktemp("rtq_predict"), 2, 6)
    ret = root / "txt_db" / "msrvtt_retrieval" / "test.jsonl"
    videos = [json.loads(line)["clip_name"] for line in ret.read_text().splitlines()]
    (root / "txt_db" / "msrvtt_caption").mkdir(parents=True)
    shutil.copy(ret, root / "txt_db" / "msrvtt_caption" / "test.jsonl")  # {"clip_name", "caption"} reads as refs
    qa = [
        {"video": f"{v}.mp4", "question": f"What is {w}?", "answer": w, "question_id": 900 + k}
        for k, (v, w) in enumerate(zip([*videos, videos[0]], ["red", "blue", "left", "top", "green", "two", "dog"]))
    ]  # 7 questions: the first video has two
    nextqa = [
        {"video": v, "qid": 50 + k, "type": "TN" if k % 2 else "CW", "question": f"what happens {k}", "answer": k % 5}
        | {f"a{c}": f"event {c} of clip {k}" for c in range(5)}
        for k, v in enumerate(videos)
    ]
    for folder, name, rows in (("msrvtt_qa", "qa_test.json", qa), ("nextqa", "test.json", nextqa)):
        (root / "annotations" / folder).mkdir(parents=True)
        (root / "annotations" / folder / name).write_text(json.dumps(rows))
    return root


@pytest.mark.parametrize(
    ("task", "dataset"),
    [("retrieval", "msrvtt_retrieval"), ("captioning", "msrvtt_caption"), ("qa", "msrvtt_qa"),
     ("multiple_choice", "nextqa")],
)  # fmt: skip
def test_cli_predict_writes_one_row_per_item(predict_root, tmp_path, task, dataset):
    import json

    out = tmp_path / "p.jsonl"
    cli = main(
        ["predict", "--config", "tiny", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
         "--data.data_root", str(predict_root), "--data.dataset", dataset, "--data.video_db", "vis_db/msrvtt",
         "--data.generate_demo_data", "false", "--data.eval_batch_size", "4", "--model.config.task", task,
         # init 0.5: at the official 0.02 the random tiny decoders write one text for every video
         "--model.config.init_std", "0.5", "--predictions.path", str(out)]
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    has_arrays = task in ("retrieval", "multiple_choice")  # captioning and QA write no tensor file
    assert (tmp_path / "p.pt").exists() == has_arrays
    arrays = torch.load(tmp_path / "p.pt", weights_only=True) if has_arrays else {}
    ds = cli.datamodule.datasets["test"]
    assert len(rows) == len(ds) == {"qa": 7}.get(task, 6)  # 2 batches
    assert [r["index"] for r in rows] == list(range(len(ds)))  # each item once, in dataset order
    m = cli.model.eval().model
    outputs = set()
    for i, row in enumerate(rows):
        item = ds[row["index"]]  # retrieval: one caption per video here, so text i is video item i's caption
        video = item["video"][None]
        assert row["video_id"] == item["video_id"]
        with torch.no_grad():
            if task == "retrieval":
                assert item["text_index"] == [row["index"]]
                assert (row["video_index"], row["caption"]) == (item["video_index"], item["captions"][0])
                ids, mask = m.tokenize(item["captions"], "cpu")
                torch.testing.assert_close(arrays["video_feat"][i], m.encode_video(video)[0][0], rtol=0, atol=1e-5)
                torch.testing.assert_close(arrays["text_feat"][i], m.encode_text(ids, mask)[0], rtol=0, atol=1e-5)
                outputs.add(tuple(arrays["video_feat"][i].tolist()))
            elif task == "captioning":
                assert row["caption"] == m.generate(video)[0]
                outputs.add(row["caption"])
            elif task == "qa":
                assert (row["question_id"], row["question"]) == (item["question_id"], item["question"])
                assert row["answer"] == m.generate(video, *m.tokenize_question([item["question"]], "cpu"))[0]
                outputs.add(row["answer"])
            else:
                assert (row["qid"], row["type"]) == (item["qid"], item["type"])
                scores = m(video, *m.tokenize(item["candidates"], "cpu"))[0]
                torch.testing.assert_close(arrays["scores"][i], scores, rtol=1e-4, atol=1e-4)  # logits up to ~20
                k = int(scores.argmax())
                assert (row["choice"], row["candidate"]) == (k, item["candidates"][k])
                assert row["answer_text"] == item["options"][k] == f"event {k} of clip {row['index']}"
                outputs.add(k)
    assert len(outputs) > 1  # the outputs differ between items, so a row paired with the wrong item would show


@pytest.fixture(scope="module")
def multi_caption_root(tmp_path_factory):
    """Six synthetic clips in a ClipBERT LMDB (no clip the order-swapped twin of another, whose scores could tie)
    with a multi-caption ClipBERT jsonl test set: caption lists, string captions, and one clip named again on a
    later line (14 captions). Returns (root, the captions in file order as (video id, caption))."""
    import json
    import random

    from rtqvl.data import write_lmdb
    from rtqvl.synthetic import caption_of, encode_mp4, order_clip, order_pairs

    root = tmp_path_factory.mktemp("rtq_multi")
    pairs = []
    for a, b in order_pairs(40, random.Random(0)):
        if (b, a) not in pairs and len(pairs) < 6:
            pairs.append((a, b))
    v = [f"clip{i}" for i in range(6)]
    write_lmdb(root / "vis_db" / "msrvtt", {v[i]: encode_mp4(order_clip(a, b)) for i, (a, b) in enumerate(pairs)})
    base = [caption_of(a, b) for a, b in pairs]
    lines = [
        {"clip_name": v[0], "caption": [base[0], f"first {base[0]}", "A clip (red)!"]},
        {"clip_name": v[1], "caption": base[1]},
        {"video": f"{v[2]}.mp4", "caption": [base[2], "two things happen"]},
        {"clip_name": v[3], "caption": [base[3], "one", "then another", f"{base[3]} again"]},
        {"clip_name": v[1], "caption": "the second clip, named on a later line"},
        {"clip_name": v[4], "caption": [base[4]]},
        {"clip_name": v[5], "caption": [base[5], "last clip"]},
    ]
    ann = root / "txt_db" / "msrvtt_retrieval"
    ann.mkdir(parents=True)
    (ann / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines), encoding="utf-8")
    texts = []
    for row in lines:
        vid = (row.get("clip_name") or row["video"]).split(".")[0]
        texts += [(vid, c) for c in (row["caption"] if isinstance(row["caption"], list) else [row["caption"]])]
    return root, texts


def _multi_caption_run(root, tmp_path, monkeypatch):
    """A tiny retrieval module and data module on ``root`` (eval batches of 4 videos), with counters of the videos
    the dataset decodes (by id) and of the clips ``encode_video`` sees."""
    from collections import Counter

    from rtqvl.data import RetrievalDataset, RTQDataModule

    decoded: Counter = Counter()
    load = RetrievalDataset.load_video

    def counting_load(self, video_id):
        decoded[video_id] += 1
        return load(self, video_id)

    monkeypatch.setattr(RetrievalDataset, "load_video", counting_load)
    torch.manual_seed(0)
    # init 0.5: at the official 0.02 the tiny encoders give nearly the same feature for every clip and caption,
    # and float rounding alone could reorder the scores
    mod = RTQModule(tiny_config(k_test=3, init_std=0.5))
    encoded: dict = {}
    encode = count_rows(mod.model, "encode_video", encoded, "clips")
    dm = RTQDataModule("msrvtt_retrieval", str(root), num_frames=4, image_size=32, eval_batch_size=4, num_workers=0)
    return mod, dm, functools.partial(quiet_trainer, tmp_path), decoded, encoded, encode


def _multi_caption_reference(mod, dm, texts, encode):
    """By hand from the model's encoders: every clip encoded alone, every caption of the file (in file order)
    tokenised as evaluation does; the cosine matrix, its ITM re-ranking and each text's video column."""
    from rtqvl.data import normalize_text

    m = mod.model.eval()
    ds = dm.datasets["test"]
    vids = list(dict.fromkeys(v for v, _ in texts))  # order of first appearance
    gt = torch.tensor([vids.index(v) for v, _ in texts])
    with torch.no_grad():
        feats, tokens = zip(*(encode(ds.load_video(v)[None]) for v in vids), strict=True)
        v_feat, tokens = torch.cat(feats), torch.cat(tokens)
        ids, mask = m.tokenize([normalize_text(c) for _, c in texts], "cpu", pad_to_max=True)
        sim = m.encode_text(ids, mask) @ v_feat.T
        t2v, v2t = m.rerank(sim, tokens, ids, mask, mod.config.k_test)
    return vids, gt, v_feat, t2v, v2t


def test_multi_caption_retrieval_test_encodes_each_video_once(multi_caption_root, tmp_path, monkeypatch):
    # MSR-VTT full / MSVD style: 6 clips, 14 captions; each clip is decoded and encoded once per evaluation (not
    # once per caption) and the metrics are those of the per-caption text × per-video feature matrix
    from rtqvl.metrics import retrieval_metrics

    root, texts = multi_caption_root
    mod, dm, trainer, decoded, encoded, encode = _multi_caption_run(root, tmp_path, monkeypatch)
    seen: dict = {}
    keep_metric_inputs(mod.test_metric, seen)
    logged = trainer().test(mod, datamodule=dm, verbose=False)[0]
    assert len(texts) == 14 and len(dm.datasets["test"]) == 6 == dm.datasets["test"].num_videos
    assert encoded["clips"] == 6
    assert sorted(decoded) == sorted({v for v, _ in texts}) and set(decoded.values()) == {1}
    vids, gt, _, t2v, v2t = _multi_caption_reference(mod, dm, texts, encode)
    assert seen["gt"].tolist() == gt.tolist()
    # re-ranked scores reach ~10 and the evaluation encodes clips in batches of 4 while the reference encodes them
    # one by one: float32 sums in another order differ by ~1e-5 of that scale
    torch.testing.assert_close(seen["t2v"], t2v, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(seen["v2t"], v2t, rtol=1e-5, atol=1e-4)
    ref = retrieval_metrics(t2v, gt, v2t)
    assert ref["t2v_R@1"] < 100.0  # the tiny random model does not solve it: a wrong pairing would show
    for k, v in ref.items():
        assert logged[f"test/{k}"] == pytest.approx(v, abs=1e-4), k


def test_multi_caption_retrieval_predict_rows_per_caption_encode_each_video_once(
    multi_caption_root, tmp_path, monkeypatch
):
    import json

    from mmzoo.predict import PredictionWriter

    from rtqvl.data import normalize_text

    root, texts = multi_caption_root
    mod, dm, trainer, decoded, encoded, encode = _multi_caption_run(root, tmp_path, monkeypatch)
    out = tmp_path / "p.jsonl"
    trainer(callbacks=[PredictionWriter(str(out))]).predict(mod, datamodule=dm, return_predictions=False)
    assert encoded["clips"] == 6 and set(decoded.values()) == {1}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    arrays = torch.load(tmp_path / "p.pt", weights_only=True)
    assert sorted(r["index"] for r in rows) == list(range(14))  # one row per caption, each once
    vids, gt, v_feat, _, _ = _multi_caption_reference(mod, dm, texts, encode)
    m = mod.model
    for i, row in enumerate(rows):
        t = row["index"]
        assert (row["video_id"], row["caption"]) == (texts[t][0], normalize_text(texts[t][1]))
        assert row["video_index"] == int(gt[t])
        torch.testing.assert_close(arrays["video_feat"][i], v_feat[gt[t]], rtol=0, atol=1e-5)
        with torch.no_grad():
            ids, mask = m.tokenize([row["caption"]], "cpu")
            torch.testing.assert_close(arrays["text_feat"][i], m.encode_text(ids, mask)[0], rtol=0, atol=1e-5)


def test_retrieval_eval_on_training_items_names_the_missing_keys(multi_caption_root, tmp_path, monkeypatch):
    # a custom evaluation set that yields training items (one "caption" each) gets an error naming the contract
    from rtqvl.data import collate

    root, _ = multi_caption_root
    mod, dm, *_ = _multi_caption_run(root, tmp_path, monkeypatch)
    dm.setup("test")
    evaluation = [dm.datasets["test"][i] for i in range(2)]
    drop = ("captions", "text_index")
    batch = collate(
        [{**{k: v for k, v in x.items() if k not in drop}, "caption": x["captions"][0]} for x in evaluation]
    )
    assert "caption" in batch and "captions" not in batch
    for step in (mod.test_step, mod.predict_step):
        with pytest.raises(KeyError, match=r"lacks \['captions', 'text_index', 'caption_video'\].*RetrievalDataset"):
            step(batch, 0)


def _trainer_stub(max_epochs, max_steps=-1, batches=4, accumulate=1, epoch=1):
    from types import SimpleNamespace

    return SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, num_training_batches=batches,
                           accumulate_grad_batches=accumulate, current_epoch=epoch, optimizers=[])  # fmt: skip


def test_cosine_epochs_from_the_trainer():
    """E is max_epochs; with max_epochs -1 it is the epochs max_steps reaches; with neither bound an error names
    both keys (E = 1 would make the lr jump between the floor and the peak from epoch to epoch)."""
    from rtqvl.module import cosine_epochs

    assert cosine_epochs(_trainer_stub(6)) == 6
    assert cosine_epochs(_trainer_stub(6, max_steps=5)) == 6  # LAVIS' E: the epoch count, even if max_steps stops early
    assert cosine_epochs(_trainer_stub(-1, max_steps=12)) == 3
    assert cosine_epochs(_trainer_stub(-1, max_steps=13)) == 4  # the 4th epoch is cut short
    assert cosine_epochs(_trainer_stub(-1, max_steps=6, accumulate=2)) == 3  # 2 optimizer steps per epoch
    for stub in (_trainer_stub(-1), _trainer_stub(-1, max_steps=6, batches=float("inf"))):
        with pytest.raises(
            ValueError, match=r"trainer\.max_epochs=-1 and trainer\.max_steps=.*set trainer\.max_epochs"
        ):
            cosine_epochs(stub)


def test_unbounded_epochs_refused_at_the_first_batch():
    mod = RTQModule(tiny_config(), lr=1e-3, warmup_steps=0)
    mod._trainer = _trainer_stub(-1)
    with pytest.raises(ValueError, match=r"trainer\.max_epochs=-1 and trainer\.max_steps=-1"):
        mod.on_train_batch_start(None, 0)


class _LrRecorder(RTQModule):
    """RTQModule's schedule and optimiser with a trivial step that records (epoch, lr) per batch."""

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, self.trainer.optimizers[0].param_groups[0]["lr"]))
        return self.model.vision_proj.weight.sum() * 0.0


def test_cosine_schedule_with_max_epochs_minus_one_and_max_steps(tmp_path):
    """A real fit with max_epochs -1: E comes from max_steps (6 steps of 2 accumulated batches, 4 batches per epoch
    -> 3 epochs), so the lr follows ½(1 + cos(π e / 3)); before, E = 1 put epoch 1 at the floor and epoch 2 at the
    peak. Without max_steps the fit is refused at its first batch (max_time keeps a regression from running on)."""
    mod = _LrRecorder(tiny_config(), lr=1e-3, warmup_steps=0, min_lr=0.0)
    mod.seen = []
    data = torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=1)
    quiet_trainer(tmp_path, max_epochs=-1, max_steps=6, accumulate_grad_batches=2).fit(mod, train_dataloaders=data)
    lr = dict(mod.seen)
    assert sorted(lr) == [0, 1, 2] and len(mod.seen) == 12
    assert all(v == lr[e] for e, v in mod.seen)  # constant within each epoch (warm-up 0)
    assert lr[0] == pytest.approx(1e-3)
    assert lr[1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert lr[2] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(2 * math.pi / 3)))
    with pytest.raises(ValueError, match=r"trainer\.max_epochs=-1 and trainer\.max_steps=-1"):
        quiet_trainer(tmp_path, max_epochs=-1, max_time={"seconds": 3}).fit(mod, train_dataloaders=data)
