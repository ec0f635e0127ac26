"""Module-level worker for the two-process loss test (spawned processes import it by name)."""

import torch
import torch.nn.functional as F
from torch import nn

from shenet.losses import SHENetContrastiveLoss
from shenet.models import TextFeatures, VideoFeatures, aggregate_similarity, syntax_guided_similarity

B, D, V, M, T, P = 4, 8, 2, 3, 3, 4


def features(seed: int = 0):
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
    text, video = features()
    per = B // world
    sl = slice(rank * per, (rank + 1) * per)
    return run(text.apply(lambda x: x[sl]), video.apply(lambda x: x[sl]), aux_weight)


# ------------------------------------------------------------------------- evaluation across two processes

EVAL_VIDEOS = 7  # odd: the sharding below pads rank 1 with a repeat, as DistributedSampler does


def eval_module():
    """A tiny random SHE-Net (same weights in every process: fixed seed)."""
    from shenet.models import SHENetConfig
    from shenet.module import SHENetModule

    torch.manual_seed(0)
    cfg = SHENetConfig(clip_model="custom", random_init=True, max_frames=4, tau_frame=0.05, tau_patch=0.05)
    return SHENetModule(cfg, eval_text_chunk=2, eval_video_chunk=3, eval_feature_dtype="float32").eval()


def eval_batches(indices: list[int], batch_size: int = 2) -> list[dict]:
    """Evaluation batches of the digits test split over the given video indices."""
    from shenet.data import DigitsDataset, RetrievalCollate
    from shenet.hierarchy import ParserConfig, build_parser
    from shenet.tokenization import TextEncoder

    ds = DigitsDataset("test", num_videos=EVAL_VIDEOS, seed=3, image_size=32)
    collate = RetrievalCollate(TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8))
    return [collate([ds[i] for i in indices[a : a + batch_size]]) for a in range(0, len(indices), batch_size)]


def evaluate(indices: list[int]) -> dict[str, float]:
    """The metrics SHENetModule logs at the end of a test epoch over ``indices`` (this process's shard)."""
    module = eval_module()
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    with torch.no_grad():
        for batch in eval_batches(indices):
            module.test_step(batch, 0)
    module.on_test_epoch_end()
    return logged


def eval_rank(rank: int, world: int) -> dict[str, float]:
    """DistributedSampler's sharding of the test videos (padded to a multiple of ``world`` by repeats)."""
    total = -(-EVAL_VIDEOS // world) * world
    padded = [i % EVAL_VIDEOS for i in range(total)]
    return evaluate(padded[rank::world])
