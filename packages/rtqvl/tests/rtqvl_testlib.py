"""Test helpers: tiny model configs (spec §8a) and synthetic data in the official formats (spec §8b)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtqvl.losses import ITCLoss
from rtqvl.models import TINY_TEXT, TINY_VISION, RTQConfig, TextConfig, VisionConfig


def tiny_vision(**over) -> VisionConfig:
    return VisionConfig(**{**TINY_VISION, **over})


def tiny_config(task: str = "retrieval", **over) -> RTQConfig:
    vision = over.pop("vision", tiny_vision())
    text = TextConfig(**TINY_TEXT, dropout=0.0)
    kw = dict(
        task=task,
        vision=vision,
        text=text,
        embed_dim=32,
        queue_size=16,
        k_test=4,
        max_text_len=16,
        max_caption_len=16,
        num_beams=2,
        gen_max_len=6,
        gen_min_len=2,
    )
    kw.update(over)
    return RTQConfig(**kw)


def quiet_trainer(root, **kw):
    """A one-CPU Lightning Trainer without logger, checkpoints, progress bar or summary, writing under ``root``."""
    import lightning.pytorch as pl

    opts = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return pl.Trainer(**opts, enable_model_summary=False, default_root_dir=str(root), **kw)


def count_rows(obj, method: str, counts: dict, key: str):
    """Wrap ``obj.<method>`` so that every call adds the length of its first argument to ``counts[key]`` (set to 0
    here); returns the unwrapped method."""
    original = getattr(obj, method)
    counts[key] = 0

    def counting(first, *args, **kwargs):
        counts[key] += first.shape[0]
        return original(first, *args, **kwargs)

    setattr(obj, method, counting)
    return original


def keep_metric_inputs(metric, seen: dict) -> None:
    """Make a retrieval metric's ``update(t2v, gt, v2t)`` also store copies of its inputs in ``seen``."""
    update = metric.update

    def keep(t2v, gt, v2t):
        seen.update(t2v=t2v.clone(), gt=gt.clone(), v2t=v2t.clone())
        update(t2v, gt, v2t)

    metric.update = keep


def itc_inputs(world: int, b: int = 4, e: int = 8, q: int = 8):
    g = torch.Generator().manual_seed(0)
    n = world * b
    w = torch.randn(e, e, generator=g)
    x_v, x_t = torch.randn(n, e, generator=g), torch.randn(n, e, generator=g)
    v_m = F.normalize(torch.randn(n, e, generator=g), dim=-1)
    t_m = F.normalize(torch.randn(n, e, generator=g), dim=-1)
    idx = torch.tensor([i // 2 for i in range(n)])
    vq = F.normalize(torch.randn(e, q, generator=g), dim=0)
    tq = F.normalize(torch.randn(e, q, generator=g), dim=0)
    iq = torch.full((1, q), -100)
    return w, x_v, x_t, v_m, t_m, idx, vq, tq, iq


def itc_loss_and_grad(w, x_v, x_t, v_m, t_m, idx, vq, tq, iq, rows):
    w = w.clone().requires_grad_(True)
    v = F.normalize(x_v[rows] @ w, dim=-1)
    t = F.normalize(x_t[rows] @ w, dim=-1)
    loss, gathered = ITCLoss()(v, t, v_m[rows], t_m[rows], idx[rows], vq, tq, iq, 0.07, 0.4)
    loss.backward()
    return loss.detach(), w.grad, gathered


def itc_worker(rank: int, world: int):
    inputs = itc_inputs(world)
    b = inputs[1].shape[0] // world
    rows = torch.arange(rank * b, (rank + 1) * b)
    loss, grad, gathered = itc_loss_and_grad(*inputs, rows)
    return loss, grad, gathered


# a fixed retrieval evaluation set of 5 videos and 8 captions, in the order a jsonl file would list them: video 1
# has two captions, video 3 three, and their captions are interleaved with other videos' (text i ↔ RET_OWNER[i])
RET_CAPTIONS = [
    "red square",
    "blue square on the left",
    "green square",
    "white square then dog",
    "a blue square",
    "a dog",
    "yellow square",
    "white then a dog",
]
RET_OWNER = [0, 1, 2, 3, 1, 3, 4, 3]


def retrieval_eval_items(videos: list[int]) -> list[dict]:
    """The evaluation items (one per video, with all its captions) of the given videos of the fixed set."""
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(5, 4, 3, 32, 32, generator=g)
    items = []
    for v in videos:
        texts = [t for t, owner in enumerate(RET_OWNER) if owner == v]
        items.append(
            {
                "video_id": f"video{v}",
                "video_index": v,
                "captions": [RET_CAPTIONS[t] for t in texts],
                "text_index": texts,
                "video": clips[v],
                "index": v,
            }
        )
    return items


def retrieval_eval_batch(videos: list[int]) -> dict:
    """Evaluation batch (the data module's collate) of the given videos of the fixed 5-video, 8-caption set."""
    from rtqvl.data import collate

    return collate(retrieval_eval_items(videos))


def retrieval_eval_logs(
    rank: int, world: int, shards: list[list[int]], store: str = "pinned", seen: dict | None = None
) -> dict[str, float]:
    """Run RTQModule's retrieval evaluation (eval steps on this rank's videos, then the epoch end) and return what
    it logs. ``shards[rank]`` = this rank's videos, each a list of batches (an empty list: the rank has none).
    ``store`` = ``eval_token_store``. ``seen`` (optional) receives what the rank held: ``store_rows`` (rows of its
    token store), ``store_devices`` (devices of the store's tensors), ``eval_store_max_dim`` (largest ndim among the
    other per-video and per-text tensors), ``itm_pairs`` (pairs it scored with ITM), ``videos_encoded`` (videos
    passed to ``encode_video``), ``t2v`` / ``v2t`` / ``gt`` (the re-ranked matrices and the texts' video columns
    given to the metric)."""
    from types import SimpleNamespace

    from rtqvl.module import RTQModule

    torch.manual_seed(0)
    mod = RTQModule(tiny_config(queue_size=8, k_test=3), eval_token_store=store).eval()
    logged: dict[str, float] = {}
    mod.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    mod._trainer = SimpleNamespace(world_size=world, global_rank=rank, sanity_checking=False)
    seen = {} if seen is None else seen
    count_rows(mod.model, "itm_logits", seen, "itm_pairs")
    count_rows(mod.model, "encode_video", seen, "videos_encoded")
    keep_metric_inputs(mod.val_metric, seen)
    with torch.no_grad():
        for items in shards[rank]:
            mod.validation_step(retrieval_eval_batch(items), 0)
        ts = mod._token_store
        seen["store_rows"] = 0 if ts is None else len(ts)
        seen["store_devices"] = set() if ts is None else {str(p.device) for p in ts.parts}
        seen["eval_store_max_dim"] = max(
            (v.ndim for e in mod._eval_store for part in e.values() for v in part.values()), default=0
        )
        mod.on_validation_epoch_end()
    return logged


def retrieval_eval_worker(rank: int, world: int) -> list:
    # DistributedSampler layout of 5 videos over 2 ranks (rank 1's last video is padding, a repeat of video 0); the
    # ranks hold 1 + 2 + 1 and 2 + 3 + 1 captions
    seen: dict = {}
    padded = retrieval_eval_logs(rank, world, [[[0, 2], [4]], [[1, 3], [0]]], seen=seen)
    # rank 1 holds no batch at all (every clip skipped): it must still join the gather
    empty = retrieval_eval_logs(rank, world, [[[0, 1], [2, 3, 4]], []])
    return [padded, empty, seen]


# ------------------------------------------------------------------ captioning / QA / NExT-QA under DDP padding

# five evaluation items; the fake model answers item 0 right and the others wrong, so counting item 0 twice (the
# DistributedSampler's padding of 5 items over 2 ranks) would change every metric
GEN_TASKS = ("captioning", "qa", "multiple_choice")
_REFS = ["a man is cooking food", "two dogs play in the snow", "a red car drives", "people dance", "a cat sleeps"]
_PREDS = ["a man is cooking food", "a bird", "a bird", "a bird", "a bird"]
_ANSWERS = ["dog", "cat", "red", "two", "blue"]
_QA_PREDS = ["dog", "car", "car", "car", "car"]
_CHOICE = [1, 2, 3, 4, 0]
_PICK = [1, 0, 0, 0, 0]
_TYPES = ["CW", "CH", "TN", "DC", "DL"]


def gen_eval_batch(task: str, items: list[int]) -> dict:
    """Batch of the given items; each clip's first pixel holds its item number (read by the fake model)."""
    video = torch.zeros(len(items), 4, 3, 32, 32)
    video[:, 0, 0, 0, 0] = torch.tensor(items, dtype=torch.float32)
    batch = {"video": video, "index": torch.tensor(items)}
    if task == "captioning":
        batch["references"] = [[_REFS[i]] for i in items]
    elif task == "qa":
        batch["question"] = [f"what is item {i}" for i in items]
        batch["answer"] = [_ANSWERS[i] for i in items]
    else:
        batch["candidates"] = [[f"question item {i} answer {c}" for c in range(5)] for i in items]
        batch["answer"] = torch.tensor([_CHOICE[i] for i in items])
        batch["type"] = [_TYPES[i] for i in items]
    return batch


def gen_eval_logs(task: str, rank: int, world: int, shards: list[list[list[int]]]) -> dict[str, float]:
    """RTQModule's evaluation of ``task`` (eval steps on ``shards[rank]``, then the epoch end) with a fake model
    whose outputs depend only on the item number; returns what it logs."""
    from types import SimpleNamespace

    from rtqvl.module import RTQModule

    mod = RTQModule(tiny_config(task), caption_backend="python").eval()
    logged: dict[str, float] = {}
    mod.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    mod._trainer = SimpleNamespace(world_size=world, global_rank=rank, sanity_checking=False)

    def item(video: torch.Tensor) -> list[int]:
        return [int(v) for v in video[:, 0, 0, 0, 0]]

    if task == "captioning":
        mod.model.generate = lambda video: [_PREDS[i] for i in item(video)]
    elif task == "qa":
        mod.model.generate = lambda video, *q: [_QA_PREDS[i] for i in item(video)]
    else:  # logits favouring choice _CHOICE[i] when _PICK[i] (right), else the next choice (wrong)

        def choose(video, ids, mask, momentum=False):
            picks = [(_CHOICE[i] + 1 - _PICK[i]) % 5 for i in item(video)]
            return torch.nn.functional.one_hot(torch.tensor(picks), 5).float()

        mod.model.forward = choose
    with torch.no_grad():
        for items in shards[rank]:
            mod.validation_step(gen_eval_batch(task, items), 0)
        mod.on_validation_epoch_end()
    return logged


# DistributedSampler (shuffle off) of 5 items over 2 ranks: rank r gets items r, r+2, ... and rank 1 ends with a
# repeat of item 0; batches of 2
GEN_SHARDS = [[[0, 2], [4]], [[1, 3], [0]]]


def gen_eval_worker(rank: int, world: int) -> dict[str, dict[str, float]]:
    return {task: gen_eval_logs(task, rank, world, GEN_SHARDS) for task in GEN_TASKS}


def two_process_worker(rank: int, world: int) -> dict:
    return {
        "itc": itc_worker(rank, world),
        "retrieval_eval": retrieval_eval_worker(rank, world),
        "gen_eval": gen_eval_worker(rank, world),
    }
