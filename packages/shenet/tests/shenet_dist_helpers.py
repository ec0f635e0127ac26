"""Module-level worker for the two-process loss test (spawned processes import it by name)."""

import torch
import torch.nn.functional as F
from torch import nn

from shenet.losses import SHENetContrastiveLoss
from shenet.models import TextFeatures, VideoFeatures, aggregate_similarity, syntax_guided_similarity

B, D, V, M, T, P = 4, 8, 2, 3, 3, 4


def features(seed: int = 0, empty_video: int | None = None):
    """B random text-video pairs; ``empty_video``: that video has no valid frame (zero embedding, as encoded)."""
    g = torch.Generator().manual_seed(seed)
    n = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    text = TextFeatures(
        n(B, D),
        n(B, V, D),
        n(B, M, D),
        n(B, V, D),
        n(B, M, D),
        torch.rand(B, V, generator=g) > 0.3,
        torch.rand(B, M, generator=g) > 0.3,
        torch.randint(-1, V, (B, M), generator=g),
    )
    frames = n(B, T, D)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2] = False
    video = VideoFeatures(n(B, D), frames, n(B, T, P, D), mask)
    if empty_video is not None:
        mask[empty_video] = False
        video.video[empty_video] = 0.0
    return text, video


class Similarity(nn.Module):
    """SHENet.similarity with learnable τ and level weights, without the CLIP towers (keeps the workers light)."""

    def __init__(self):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor([0.2, 0.3]).log())
        self.sim_logits = nn.Parameter(torch.tensor([0.1, -0.2, 0.3]))
        self.logit_scale_log = nn.Parameter(torch.tensor(2.0))

    def forward(self, text, video):
        tau = self.log_tau.exp()
        S1, S2, S3 = syntax_guided_similarity(text, video, tau[0], tau[1])
        avail = torch.stack([torch.ones_like(text.verb_mask[:, 0]), text.verb_mask.any(-1), text.noun_mask.any(-1)], -1)
        S = aggregate_similarity(torch.stack([S1, S2, S3]), avail, torch.softmax(self.sim_logits, 0))
        return {"S": S, "S1": S1, "S2": S2, "S3": S3}


def model():
    return Similarity()


def run(text, video, aux_weight):
    """Loss and gradients (inputs' float fields, similarity parameters) for the given features."""
    net = model()
    leaves = []

    def leaf(x):
        if x.is_floating_point():
            x = x.clone().requires_grad_(True)
            leaves.append(x)
        return x

    text, video = text.apply(leaf), video.apply(leaf)
    out = SHENetContrastiveLoss(aux_weight)(text, video, net, net.logit_scale_log.exp())
    out["loss"].backward()
    return {
        "loss": out["loss"].detach(),
        "inputs": [x.grad.clone() for x in leaves],
        "params": {k: p.grad.clone() for k, p in net.named_parameters()},
    }


def ddp_rank(rank: int, world: int, aux_weight: float):
    """This rank's slice of :func:`features`, with every video valid (key None) and with video 3 empty (key 3)."""
    per = B // world
    sl = slice(rank * per, (rank + 1) * per)
    out = {}
    for empty in (None, 3):
        text, video = features(empty_video=empty)
        out[empty] = run(text.apply(lambda x: x[sl]), video.apply(lambda x: x[sl]), aux_weight)
    return out


# ------------------------------------------------------------------------ evaluation across several processes

EVAL_VIDEOS = 7  # divisible by neither 2 nor 3: DistributedSampler pads the last round with repeats


def eval_module(**config):
    """A tiny random SHE-Net (same weights in every process: fixed seed); ``config`` overrides SHENetConfig keys."""
    from shenet.models import SHENetConfig
    from shenet.module import SHENetModule

    torch.manual_seed(0)
    kw = dict(clip_model="custom", random_init=True, max_frames=4, tau_frame=0.05, tau_patch=0.05)
    cfg = SHENetConfig(**{**kw, **config})
    return SHENetModule(cfg, eval_text_chunk=2, eval_video_chunk=3, eval_feature_dtype="float32").eval()


CAPTIONS = [
    "a bright seven appears near a three",
    "a dim two vanishes",
    "a man in a red shirt is playing a guitar",
    "two dogs run on the green grass",
    "a bright nine stays near a small four",
    "a woman is on stage",
    "a dim one appears",
]


def eval_items(empty_video: int | None = None) -> list[dict]:
    """Seven evaluation items (random 32 x 32 frames, fixed captions); every third video has a second query
    (MSVD-like multi-caption), with query ids numbered video by video as the dataset readers do. ``empty_video``:
    that video is all padding, as an unreadable one under ``data.on_corrupt: skip``."""
    g = torch.Generator().manual_seed(3)
    items, k = [], 0
    for i in range(EVAL_VIDEOS):
        captions = [CAPTIONS[i]] + ([CAPTIONS[(i + 1) % EVAL_VIDEOS]] if i % 3 == 0 else [])
        mask = torch.ones(4, dtype=torch.bool)
        mask[3:] = i % 2 == 0  # some videos are shorter (a padded frame)
        if i == empty_video:
            mask[:] = False
        items.append(
            {
                "video": torch.randn(4, 3, 32, 32, generator=g) * mask[:, None, None, None],
                "video_mask": mask,
                "video_index": i,
                "captions": captions,
                "text_ids": list(range(k, k + len(captions))),
            }
        )
        k += len(captions)
    return items


def eval_batches(indices: list[int], batch_size: int = 2, empty_video: int | None = None) -> list[dict]:
    """Evaluation batches of :func:`eval_items` over the given video indices."""
    from shenet.data import RetrievalCollate
    from shenet.hierarchy import ParserConfig, build_parser
    from shenet.tokenization import TextEncoder

    items = eval_items(empty_video)
    collate = RetrievalCollate(TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8))
    return [collate([items[i] for i in indices[a : a + batch_size]]) for a in range(0, len(indices), batch_size)]


def evaluate(indices: list[int], module=None, empty_video: int | None = None) -> dict:
    """One test epoch of SHENetModule (default :func:`eval_module`) over ``indices`` (this process's shard): the
    metrics it logs, the assembled score matrix with its ground truth and query ids, and the video indices each
    similarity call was given."""
    module = module or eval_module()
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    out: dict = {"logged": logged, "scored_videos": []}
    similarity_matrix, score_matrix = module.model.similarity_matrix, module._score_matrix

    def scoring(text, video, *args, **kwargs):
        out["scored_videos"].append(len(video))
        return similarity_matrix(text, video, *args, **kwargs)

    def assembled():
        scores, query_gt, text_ids = score_matrix()
        out.update(scores=scores.cpu(), query_gt=query_gt.cpu(), text_ids=text_ids.cpu())
        return scores, query_gt, text_ids

    module.model.similarity_matrix = scoring
    module._score_matrix = assembled
    with torch.no_grad():
        for batch in eval_batches(indices, empty_video=empty_video):
            module.test_step(batch, 0)
    module.on_test_epoch_end()
    return out


def shard(rank: int, world: int) -> list[int]:
    """The test videos Lightning's DistributedSampler (shuffle off) gives ``rank``: the last round padded with
    repeats of the first items."""
    from torch.utils.data import DistributedSampler

    return list(DistributedSampler(range(EVAL_VIDEOS), num_replicas=world, rank=rank, shuffle=False))


def eval_rank(rank: int, world: int) -> dict:
    """:func:`evaluate` on this rank's DistributedSampler shard, with the Python-object collectives refused (they
    would carry video features pickled)."""
    import torch.distributed as dist

    def refused(*args, **kwargs):
        raise AssertionError("evaluation used a Python-object collective")

    dist.all_gather_object = dist.gather_object = dist.broadcast_object_list = dist.scatter_object_list = refused
    out = evaluate(shard(rank, world))
    out["shard"] = shard(rank, world)
    return out


def eval_worlds(rank: int, world: int, init_file: str) -> dict[int, dict]:
    """:func:`eval_rank` over 3 processes, then over 2 (ranks 0 and 1 re-joined in a new group), in one spawn of
    3 processes (each process start costs seconds of imports). Rank 2 sits the second round out in a group of its
    own, which the runner closes at the end. Returns ``{world size: result}``."""
    import torch.distributed as dist

    assert world == 3, world
    out = {3: eval_rank(rank, world)}
    dist.destroy_process_group()
    if rank < 2:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
        out[2] = eval_rank(rank, 2)
    else:
        dist.init_process_group("gloo", init_method=f"file://{init_file}.solo", rank=0, world_size=1)
    return out
