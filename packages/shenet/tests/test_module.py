"""Fit/validate/test through the CLI on tiny.yaml (spec §8a) and the loss falling on a repeated batch."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from mmzoo.testing import run_distributed

from shenet.cli import main
from shenet.data import DigitsDataset, RetrievalCollate
from shenet.hierarchy import ParserConfig, build_parser
from shenet.metrics import retrieval_metrics, retrieval_ranks
from shenet.models import SHENetConfig
from shenet.module import SHENetModule, evaluation_memory
from shenet.tokenization import TextEncoder

sys.path.insert(0, str(Path(__file__).parent))
import shenet_dist_helpers as h  # noqa: E402


def test_fit_validate_test_tiny(tmp_path):
    common = [
        "--config",
        "tiny",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.data_root",
        str(tmp_path / "data"),
    ]
    cli = main(args=["fit", *common])
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/t2v_R@1", "val/v2t_MnR"):
        assert key in metrics and math.isfinite(float(metrics[key]))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["SHENetDataModule"]["parser_backend"] == "heuristic"  # the parser is recorded with the run
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    r1 = float(cli.trainer.callback_metrics["test/t2v_R@1"])
    assert 0.0 <= r1 <= 100.0


@pytest.fixture(scope="module")
def predict_roots(tmp_path_factory):
    """The tiny digits data in the MSR-VTT layout (one query per video), and an MSVD layout over the same videos with
    several captions for some videos, listed out of file order."""
    import pickle

    from shenet.synthetic import write_msrvtt_digits

    msrvtt = write_msrvtt_digits(tmp_path_factory.mktemp("msrvtt"), 2, 6)
    msvd = tmp_path_factory.mktemp("msvd")
    captions = {
        "video7": ["a dim five stays", "a five"],
        "video3": ["a nine near a three"],
        "video5": ["an eight appears", "a dim eight", "an eight near a two"],
        "video2": ["an eight stays near a nine"],
    }
    (msvd / "raw-captions.pkl").write_bytes(pickle.dumps({v: [c.split() for c in cs] for v, cs in captions.items()}))
    (msvd / "test_list.txt").write_text("\n".join(captions) + "\n")
    return {"msrvtt": (msrvtt, []), "msvd": (msvd, ["--data.videos_dir", str(msrvtt / "videos")])}


@pytest.mark.parametrize("dataset", ["msrvtt", "msvd"])
def test_cli_predict_writes_one_row_per_query(predict_roots, tmp_path, dataset):
    root, extra = predict_roots[dataset]
    out = tmp_path / "p.jsonl"
    cli = main(
        args=["predict", "--config", "tiny", "--trainer.default_root_dir", str(tmp_path), "--data.dataset", dataset,
              "--data.data_root", str(root), "--data.eval_batch_size", "3", *extra, "--predictions.path", str(out)]
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    arrays = torch.load(tmp_path / "p.pt", weights_only=True)
    ds = cli.datamodule.datasets["test"]
    assert len(rows) == ds.num_queries == {"msrvtt": 6, "msvd": 7}[dataset]
    assert len(ds) == {"msrvtt": 6, "msvd": 4}[dataset]
    assert [r["text_id"] for r in rows] == list(range(ds.num_queries))  # each query once, in evaluation order
    assert arrays["sentence"].shape == arrays["video"].shape == (len(rows), 32)
    collate = RetrievalCollate(cli.datamodule.text_encoder)
    model = cli.model.eval().model
    for j in range(len(ds)):  # each video and its queries encoded on their own
        vid, caps, text_ids = ds.items[j]
        mine = [i for i, r in enumerate(rows) if r["video_index"] == j]
        assert [rows[i]["text_id"] for i in mine] == text_ids
        assert [rows[i]["caption"] for i in mine] == caps
        assert all(rows[i]["video_id"] == vid and rows[i]["unreadable"] is False for i in mine)
        batch = collate([ds[j]])
        with torch.no_grad():
            sentence = model.encode_text(batch).sentence  # (len(caps), D)
            video = model.encode_video(batch["video"], batch["video_mask"]).video  # (1, D)
        torch.testing.assert_close(arrays["sentence"][mine], sentence, rtol=0, atol=1e-5)
        torch.testing.assert_close(arrays["video"][mine], video.expand(len(mine), -1), rtol=0, atol=1e-5)
    assert len({tuple(v.tolist()) for v in arrays["video"]}) == len(ds)  # one embedding per video, distinct


def test_predict_flags_an_unreadable_video(predict_roots, tmp_path):
    """With ``on_corrupt: skip`` a video that cannot be decoded is predicted as an empty one: its rows say so."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(predict_roots["msrvtt"][0], root)
    import csv

    with open(root / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        first = next(csv.DictReader(f))["video_id"]  # a test video
    broken = root / "videos" / f"{first}.mp4"
    broken.write_bytes(b"not a video")
    out = tmp_path / "p.jsonl"
    main(args=["predict", "--config", "tiny", "--trainer.default_root_dir", str(tmp_path), "--data.data_root",
               str(root), "--data.on_corrupt", "skip", "--predictions.path", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    assert [r["video_id"] for r in rows if r["unreadable"]] == [broken.stem]
    video = torch.load(tmp_path / "p.pt", weights_only=True)["video"]  # (6, D)
    unreadable = torch.tensor([r["unreadable"] for r in rows])
    assert torch.equal(video[unreadable], torch.zeros_like(video[unreadable]))  # the zero embedding
    assert (video[~unreadable].norm(dim=-1) > 0.99).all()


def test_loss_falls_on_repeated_batch():
    torch.manual_seed(0)
    ds = DigitsDataset("train", num_videos=8, seed=0, image_size=32)
    enc = TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8)
    batch = RetrievalCollate(enc)([ds[i] for i in range(8)])
    module = SHENetModule(SHENetConfig(clip_model="custom", random_init=True, max_frames=4))
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        text = module.model.encode_text(batch)
        video = module.model.encode_video(batch["video"], batch["video_mask"])
        loss = module.loss(text, video, module.model.similarity, module.model.logit_scale)["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("temporal", ["meanP", "seqTransf"])
def test_training_and_evaluation_with_an_all_padding_video(plain_attention, temporal):
    """Video 2 is all padding, as an unreadable video kept by ``data.on_corrupt: skip``. Training: a finite loss and
    finite gradients, the pair left out of the loss; evaluation: finite metrics, video 2 ranked last both ways."""
    module = h.eval_module(temporal=temporal, temporal_layers=1, temporal_heads=2).train()
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
    batch = h.eval_batches([1, 2, 4, 5], batch_size=4, empty_video=2)[0]  # one caption per video
    loss = module.training_step(batch, 0)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and logged["train/loss"] == pytest.approx(float(loss.detach()))
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        rest = module.training_step(h.eval_batches([1, 4, 5], batch_size=3)[0], 0)
    torch.testing.assert_close(loss.detach(), rest * 3 / 4)  # the batch without video 2, summed over B = 4

    out = h.evaluate(list(range(h.EVAL_VIDEOS)), module.eval(), empty_video=2)
    scores, query_gt = out["scores"], out["query_gt"]
    assert all(math.isfinite(v) for v in out["logged"].values()) and len(out["logged"]) == 10
    assert torch.isneginf(scores[:, 2]).all()
    assert torch.isfinite(scores[:, [v for v in range(h.EVAL_VIDEOS) if v != 2]]).all()
    pos = torch.zeros(scores.shape, dtype=torch.bool)
    pos[torch.arange(len(query_gt)), query_gt] = True
    t2v, v2t = retrieval_ranks(scores, pos), retrieval_ranks(scores.T, pos.T)
    assert (t2v[query_gt == 2] == h.EVAL_VIDEOS - 1).all()  # its caption finds it last
    assert int(v2t[2]) == len(query_gt) - int((query_gt == 2).sum())  # it finds its caption last
    expected = {f"test/{k}": float(v) for k, v in retrieval_metrics(scores, query_gt).items()}
    assert out["logged"] == expected


class _RecordingMetric:
    """Stands in for RetrievalMetrics: records where the tensors it is handed live."""

    def __init__(self):
        self.devices: list[torch.device] = []

    def update(self, *tensors):
        self.devices += [t.device for t in tensors]

    def compute(self):
        return {"t2v_R@1": torch.tensor(0.0)}

    def reset(self):
        pass


def test_eval_metric_inputs_on_module_device(monkeypatch):
    # The evaluation runs on the module's device (under DDP the gathers too: NCCL has no CPU tensors): the similarity
    # is computed there and the metric gets its inputs there. Without a GPU, the module is made to report the meta
    # device while the similarity itself runs on the CPU.
    module = h.eval_module()
    with torch.no_grad():
        for batch in h.eval_batches([0, 1, 2]):
            module.test_step(batch, 0)
    similarity_matrix = module.model.similarity_matrix
    calls = []

    def on_cpu(*args, **kwargs):
        calls.append(kwargs["device"])
        return similarity_matrix(*args, **{**kwargs, "device": torch.device("cpu")})

    monkeypatch.setattr(module.model, "similarity_matrix", on_cpu)
    monkeypatch.setattr(module, "_device", torch.device("meta"))
    metric = _RecordingMetric()
    module._eval_epoch_end("test", metric)
    assert calls == [torch.device("meta")]  # the similarity is asked to run on the module's device
    assert len(metric.devices) == 3
    assert all(d.type == "meta" for d in metric.devices), metric.devices


def _ranks_and_ties(
    scores: torch.Tensor, query_gt: torch.Tensor, tol: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """t2v, then v2t: each query's 0-based rank, and whether a negative scores within ``tol`` of its best positive
    (so that rounding at the level of ``tol`` can move that rank)."""
    pos = torch.zeros(scores.shape, dtype=torch.bool)
    pos[torch.arange(len(query_gt)), query_gt] = True
    out = []
    for m, p in ((scores, pos), (scores.T, pos.T)):
        best = m.masked_fill(~p, float("-inf")).amax(-1, keepdim=True)
        out.append((retrieval_ranks(m, p), ((m - best).abs() <= tol).logical_and(~p).any(-1)))
    return out


def test_distributed_evaluation_equals_one_process(tmp_path):
    # 7 videos (10 queries: every third video has two) over 3 and over 2 processes: DistributedSampler pads the last
    # round with repeats of videos 0 (and 1). Each rank scores every query against its own videos only, with no
    # Python-object collective (video features stay on their rank), and the repeats count once.
    single = h.evaluate(list(range(h.EVAL_VIDEOS)))
    # a video's second caption is the next video's first, so some scores tie exactly in one process; encoded in
    # other batches they may differ by rounding, which decides such a tie either way (on some CPUs, not others)
    single_ranks = _ranks_and_ties(single["scores"], single["query_gt"], 2e-6)
    assert not any(tied.all() for _, tied in single_ranks)
    n_text = sum(len(it["captions"]) for it in h.eval_items())
    assert single["scores"].shape == (n_text, h.EVAL_VIDEOS)
    names = {f"test/{d}_{m}" for d in ("t2v", "v2t") for m in ("R@1", "R@5", "R@10", "MdR", "MnR")}
    assert set(single["logged"]) == names
    by_rank = run_distributed(h.eval_worlds, world_size=3, args=(str(tmp_path / "init2"),))
    for world in (3, 2):
        ranks = [out[world] for out in by_rank[:world]]
        assert sum(len(r["shard"]) for r in ranks) > h.EVAL_VIDEOS  # the sampler did pad with repeats
        owners: dict[int, int] = {}
        for rank, r in enumerate(ranks):
            for v in r["shard"]:
                owners.setdefault(v, rank)
            own = sum(1 for v in dict.fromkeys(r["shard"]) if owners[v] == rank)
            assert sum(r["scored_videos"]) == own < h.EVAL_VIDEOS  # only this rank's videos, repeats left out
            # every rank holds the whole matrix in dataset order, each query and video once, as one process does;
            # the scores agree up to the rounding of differently composed encoder batches, the metrics exactly
            assert torch.equal(r["text_ids"], single["text_ids"]), world
            assert torch.equal(r["query_gt"], single["query_gt"]), world
            assert r["scores"].shape == single["scores"].shape, world
            torch.testing.assert_close(r["scores"], single["scores"], rtol=0, atol=1e-6)
            # the logged metrics are those of the gathered matrix, and every rank not decided by a tie is the one
            # process's rank (with no tie in the data the metrics are equal: test_metrics checks the formulas)
            expected = {f"test/{k}": float(v) for k, v in retrieval_metrics(r["scores"], r["query_gt"]).items()}
            assert r["logged"] == expected, (world, rank)
            for (mine, _), (one, tie) in zip(
                _ranks_and_ties(r["scores"], r["query_gt"], 2e-6), single_ranks, strict=True
            ):
                assert torch.equal(mine[~tie], one[~tie]), (world, rank)
        assert sum(sum(r["scored_videos"]) for r in ranks) == h.EVAL_VIDEOS


def test_evaluation_memory_formula_matches_stored_features():
    # the per-rank memory the README quotes comes from this formula: check it against what evaluation stores
    module = h.eval_module()
    with torch.no_grad():
        for batch in h.eval_batches(list(range(h.EVAL_VIDEOS))):
            module.test_step(batch, 0)
    ev = module._eval
    stored_videos = sum(x.nbytes for v in ev["video"] for x in vars(v).values()) + sum(
        x.nbytes for x in ev["video_index"]
    )
    stored_texts = sum(x.nbytes for t in ev["text"] for x in vars(t).values()) + sum(
        x.nbytes for k in ("text_ids", "text_video") for x in ev[k]
    )
    video, text = ev["video"][0], ev["text"][0]
    n_text = sum(len(t) for t in ev["text"])
    T, P, D = video.patches.shape[1:]
    mem = evaluation_memory(
        n_text, h.EVAL_VIDEOS, 1, T, P, D, text.verbs.shape[1], text.nouns.shape[1], video.patches.element_size()
    )
    assert mem["videos"] == mem["all_videos"] == stored_videos
    assert mem["texts"] == stored_texts
    assert mem["scores"] == n_text * h.EVAL_VIDEOS * 4
    assert evaluation_memory(n_text, h.EVAL_VIDEOS, 3, T, P, D, 4, 8, 4)["videos"] == 3 * stored_videos // 7
    assert mem["total"] == stored_videos + stored_texts + mem["scores"]
