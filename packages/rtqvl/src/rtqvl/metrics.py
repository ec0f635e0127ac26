"""Evaluation metrics (spec §5): retrieval R@K / MdR / MnR, captioning BLEU-4 / METEOR / ROUGE-L / CIDEr-D,
open-ended QA accuracy (VQA normalisation) and NExT-QA accuracy per question type. Each a function + Metric.

Captioning: with ``pycocoevalcap`` installed and a ``java`` executable on PATH the official scorers run on
PTB-tokenised text (METEOR included). Otherwise a pure-Python BLEU-4 / ROUGE-L / CIDEr-D (same formulas as
pycocoevalcap) runs on lower-cased, punctuation-stripped whitespace tokens and METEOR is not reported; those numbers
are close to but not strictly comparable with the paper's.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from mmzoo.config import check_choice
from mmzoo.metrics import first_of_each_id, normalize_vqa_answer
from torchmetrics import Metric

__all__ = [
    "retrieval_ranks",
    "recall_at_k",
    "retrieval_metrics",
    "RetrievalMetrics",
    "caption_tokenize",
    "bleu4",
    "rouge_l",
    "cider_d",
    "caption_metrics",
    "CaptionMetrics",
    "normalize_answer",
    "qa_accuracy",
    "QAAccuracy",
    "nextqa_accuracy",
    "NExTQAAccuracy",
]


# ----------------------------------------------------------------------------------------------- retrieval


TieRule = Literal["optimistic", "mean"]
TIE_RULES = get_args(TieRule)


def _check_ties(ties: str) -> None:
    if ties not in TIE_RULES:
        raise ValueError(f"ties={ties!r}: expected one of {TIE_RULES}")


def _tie_counts(scores: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query: h = items scored strictly above the best GT, e = non-GT items tied with it, g = GT items tied
    with it (≥ 1). All (Q,) int64."""
    if not positives.any(dim=1).all():
        raise ValueError("retrieval_ranks: every query needs at least one ground-truth item")
    s = scores.float()
    gt_score = s.masked_fill(~positives, float("-inf")).max(dim=1).values  # (Q,) best GT score
    tied = s == gt_score[:, None]
    return (s > gt_score[:, None]).sum(dim=1), (tied & ~positives).sum(dim=1), (tied & positives).sum(dim=1)


def retrieval_ranks(scores: torch.Tensor, positives: torch.Tensor, ties: TieRule = "optimistic") -> torch.Tensor:
    """0-based rank of the best-ranked ground truth of each query.

    ``ties="optimistic"`` (spec §5): the number of gallery items scored strictly higher, so a GT tied with other
    items is ranked above all of them (two identical gallery items can both be "rank 0"). ``ties="mean"``: the
    expected rank when tied items are put in a uniformly random order (what the official ``argsort`` evaluation,
    which never gives two items the same rank, yields on average): ``h + e / (g + 1)`` with h items strictly
    higher, e non-GT items and g GT items tied with the best GT score (float).

    scores (Q, G); positives (Q, G) bool (at least one True per row). Returns (Q,) int64 (optimistic) or float.
    """
    _check_ties(ties)
    h, e, g = _tie_counts(scores, positives)
    if ties == "optimistic":
        return h
    return h.double() + e.double() / (g.double() + 1.0)


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int, ties: TieRule = "optimistic") -> torch.Tensor:
    """Per-query probability (Q,) that the best-ranked GT is within the top k.

    ``optimistic`` (spec §5): 1[h < k]. ``mean``: the probability over uniformly random orders of the tied items,
    ``1 − Π_{i<m} (e − i) / (e + g − i)`` with m = k − h free slots (0 when m ≤ 0): one minus the chance that the
    first m places of the tied group all go to non-GT items (e.g. a GT tied with one other item at the top:
    R@1 = ½).
    """
    _check_ties(ties)
    h, e, g = _tie_counts(scores, positives)
    if ties == "optimistic":
        return (h < k).double()
    m = k - h  # (Q,) slots of the top k left for the tied group
    miss = torch.ones_like(h, dtype=torch.float64)
    e, g = e.double(), g.double()
    for i in range(k):  # i-th place of the tied group still goes to a non-GT item
        step = (e - i).clamp(min=0.0) / (e + g - i).clamp(min=1.0)
        miss = torch.where(m > i, miss * step, miss)
    return torch.where(m > 0, 1.0 - miss, torch.zeros_like(miss))


def _rank_stats(scores: torch.Tensor, positives: torch.Tensor, prefix: str, ties: str) -> dict[str, float]:
    r = retrieval_ranks(scores, positives, ties).double()
    out = {f"{prefix}R@{k}": float(100.0 * recall_at_k(scores, positives, k, ties).mean()) for k in (1, 5, 10)}
    out[f"{prefix}MdR"] = float((r + 1).median()) if r.numel() % 2 else float((r + 1).quantile(0.5))
    out[f"{prefix}MnR"] = float((r + 1).mean())
    return out


def retrieval_metrics(
    t2v_scores: torch.Tensor,
    text_to_video: torch.Tensor,
    v2t_scores: torch.Tensor | None = None,
    ties: TieRule = "optimistic",
) -> dict[str, float]:
    """Text→video and video→text R@1/5/10, MdR, MnR and their selection metric (mean of t2v R@1/5/10).

    Args:
        t2v_scores: (N_t, N_v) score of text i against video j.
        text_to_video: (N_t,) ground-truth video column of each text.
        v2t_scores: (N_v, N_t) scores for the video→text direction (default ``t2v_scores.T``); a video's GT texts
            are all texts pointing to it, and its rank is that of the best-ranked one.
        ties: ``optimistic`` (spec §5: rank = items scored strictly higher) or ``mean`` (expected value over random
            orders of tied items, as the official argsort evaluation on average); see :func:`retrieval_ranks`.
    Returns:
        ``{"t2v_R@1", …, "t2v_MdR", "t2v_MnR", "v2t_R@1", …, "r_mean"}``.
    """
    n_t, n_v = t2v_scores.shape
    if text_to_video.shape != (n_t,):
        raise ValueError(f"text_to_video must be ({n_t},), got {tuple(text_to_video.shape)}")
    cols = torch.arange(n_v, device=t2v_scores.device)
    pos_t2v = text_to_video.view(-1, 1).to(cols.device) == cols.view(1, -1)  # (N_t, N_v)
    out = _rank_stats(t2v_scores, pos_t2v, "t2v_", ties)
    v2t = t2v_scores.T if v2t_scores is None else v2t_scores
    pos_v2t = pos_t2v.T
    has = pos_v2t.any(dim=1)
    out.update(_rank_stats(v2t[has], pos_v2t[has], "v2t_", ties))
    out["r_mean"] = (out["t2v_R@1"] + out["t2v_R@5"] + out["t2v_R@10"]) / 3
    return out


class RetrievalMetrics(Metric):
    """Accumulates score-matrix rows (texts) and their GT video; ``compute`` calls :func:`retrieval_metrics` with
    this metric's tie rule (``ties``: ``optimistic``, the spec's, or ``mean``).

    Retrieval needs every pair, so the states are concatenated rows (one row per text, all videos as columns).
    Under DDP ``compute`` concatenates every rank's rows; a caller that already holds the whole matrix on every rank
    (as :class:`rtqvl.module.RTQModule` does) passes ``sync_on_compute=False``, otherwise each text would appear once
    per rank and every video→text rank would be counted ``world_size`` times over.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, ties: TieRule = "optimistic", **kwargs):
        super().__init__(**kwargs)
        _check_ties(ties)
        self.ties = ties
        self.add_state("t2v", default=[], dist_reduce_fx="cat")
        self.add_state("v2t", default=[], dist_reduce_fx="cat")
        self.add_state("gt", default=[], dist_reduce_fx="cat")

    def update(self, t2v_scores: torch.Tensor, text_to_video: torch.Tensor, v2t_scores: torch.Tensor | None = None):
        self.t2v.append(t2v_scores.float())
        self.gt.append(text_to_video.long())
        self.v2t.append((t2v_scores.T if v2t_scores is None else v2t_scores).float().T)  # stored text-major

    def compute(self) -> dict[str, float]:
        t2v = torch.cat(self.t2v) if isinstance(self.t2v, list) else self.t2v
        v2t = torch.cat(self.v2t) if isinstance(self.v2t, list) else self.v2t
        gt = torch.cat(self.gt) if isinstance(self.gt, list) else self.gt
        return retrieval_metrics(t2v, gt, v2t.T, self.ties)


# ---------------------------------------------------------------------------------------------- captioning

_PUNCT = re.compile(r"[^\w\s]")


def caption_tokenize(text: str) -> list[str]:
    """Fallback tokenisation: lower-case, punctuation removed, whitespace split."""
    return _PUNCT.sub(" ", text.lower()).split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(preds: list[list[str]], refs: list[list[list[str]]]) -> float:
    """Corpus BLEU-4 as pycocoevalcap computes it: clipped n-gram precisions summed over the corpus, "closest"
    reference length, brevity penalty exp(1 − r/c) when c < r."""
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, rs in zip(preds, refs, strict=True):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in rs)[1]
        for n in range(1, 5):
            h = _ngrams(hyp, n)
            max_ref: Counter = Counter()
            for r in rs:
                max_ref |= _ngrams(r, n)
            correct[n - 1] += sum(min(c, max_ref[g]) for g, c in h.items())
            guess[n - 1] += max(0, len(hyp) - n + 1)
    bleu = 1.0
    for n in range(4):
        bleu *= (correct[n] + tiny) / (guess[n] + small)
    score = bleu ** (1 / 4)
    ratio = (hyp_len + tiny) / (ref_len + small)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return score


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(preds: list[list[str]], refs: list[list[list[str]]], beta: float = 1.2) -> float:
    """ROUGE-L (pycocoevalcap): per sample F_β of the max LCS precision and recall over references; mean."""
    scores = []
    for hyp, rs in zip(preds, refs, strict=True):
        p = max((_lcs(hyp, r) / len(hyp) if hyp else 0.0) for r in rs)
        r_ = max((_lcs(hyp, r) / len(r) if r else 0.0) for r in rs)
        scores.append(((1 + beta**2) * p * r_) / (r_ + beta**2 * p) if p and r_ else 0.0)
    return sum(scores) / max(1, len(scores))


def cider_d(preds: list[list[str]], refs: list[list[list[str]]], sigma: float = 6.0) -> float:
    """CIDEr-D (pycocoevalcap): TF-IDF n-gram (1..4) cosine with clipping and a Gaussian length penalty,
    document frequencies over the references of the evaluated corpus, ×10."""
    n_max = 4
    crefs = [
        [Counter({g: c for n in range(1, n_max + 1) for g, c in _ngrams(r, n).items()}) for r in rs] for rs in refs
    ]
    ctest = [Counter({g: c for n in range(1, n_max + 1) for g, c in _ngrams(h, n).items()}) for h in preds]
    df: Counter = Counter()
    for rs in crefs:
        for g in {g for r in rs for g in r}:
            df[g] += 1
    log_n = math.log(float(len(crefs)))

    def vec(cnt: Counter):
        v = [defaultdict(float) for _ in range(n_max)]
        norm = [0.0] * n_max
        length = 0
        for g, tf in cnt.items():
            n = len(g) - 1
            v[n][g] = float(tf) * (log_n - math.log(max(1.0, df[g])))
            norm[n] += v[n][g] ** 2
            if n == 1:
                length += tf  # pycocoevalcap counts bigrams as the length (kept for comparability)
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for hyp, rs in zip(ctest, crefs, strict=True):
        vh, nh, lh = vec(hyp)
        total = [0.0] * n_max
        for r in rs:
            vr, nr, lr = vec(r)
            delta = float(lh - lr)
            for n in range(n_max):
                val = sum(min(vh[n][g], vr[n][g]) * vr[n][g] for g in vh[n])
                if nh[n] != 0 and nr[n] != 0:
                    val /= nh[n] * nr[n]
                total[n] += val * math.exp(-(delta**2) / (2 * sigma**2))
        scores.append(sum(total) / n_max / len(rs) * 10.0)
    return sum(scores) / max(1, len(scores))


def _coco_available() -> bool:
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None


CaptionBackend = Literal["auto", "coco", "python"]
CAPTION_BACKENDS = get_args(CaptionBackend)


def _check_backend(backend: str) -> None:
    check_choice("caption_backend", backend, CAPTION_BACKENDS)  # anything else: the python backend, silently


def caption_metrics(
    preds: Sequence[str], refs: Sequence[Sequence[str]], backend: CaptionBackend = "auto"
) -> dict[str, float]:
    """BLEU-4, ROUGE-L, CIDEr (and METEOR with the official backend), ×100 as the paper reports them.

    backend: ``auto`` (official when pycocoevalcap + java are present), ``coco`` or ``python``.
    """
    _check_backend(backend)
    if len(preds) != len(refs):
        raise ValueError(f"caption_metrics: {len(preds)} predictions but {len(refs)} reference lists")
    if not preds:
        raise ValueError("caption_metrics: no predictions")
    use_coco = backend == "coco" or (backend == "auto" and _coco_available())
    if use_coco:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
        res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
        return {
            "BLEU-4": 100 * Bleu(4).compute_score(gts, res)[0][3],
            "METEOR": 100 * Meteor().compute_score(gts, res)[0],
            "ROUGE-L": 100 * Rouge().compute_score(gts, res)[0],
            "CIDEr": 100 * Cider().compute_score(gts, res)[0],
        }
    p = [caption_tokenize(x) for x in preds]
    r = [[caption_tokenize(x) for x in rs] for rs in refs]
    return {"BLEU-4": 100 * bleu4(p, r), "ROUGE-L": 100 * rouge_l(p, r), "CIDEr": 100 * cider_d(p, r)}


class CaptionMetrics(Metric):
    """Collects generated captions and their references; ``compute`` calls :func:`caption_metrics`.

    Strings cannot be all-reduced as tensors, so under DDP ``compute`` gathers them with
    ``torch.distributed.all_gather_object``.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, backend: CaptionBackend = "auto"):
        super().__init__()
        _check_backend(backend)
        self.backend = backend
        self.preds: list[str] = []
        self.refs: list[list[str]] = []
        self.ids: list[int] = []

    def update(self, preds: Sequence[str], refs: Sequence[Sequence[str]], ids: Sequence[int] | None = None) -> None:
        self.preds.extend(preds)
        self.refs.extend([list(r) for r in refs])
        self.ids.extend(ids if ids is not None else range(len(self.ids), len(self.ids) + len(preds)))

    def reset(self) -> None:
        super().reset()
        self.preds, self.refs, self.ids = [], [], []

    def compute(self) -> dict[str, float]:
        items = list(zip(self.ids, self.preds, self.refs, strict=True))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, items)
            items = [x for part in gathered for x in part]
        unique = {i: (p, r) for i, p, r in items}  # drop DistributedSampler duplicates
        preds = [unique[i][0] for i in sorted(unique)]
        refs = [unique[i][1] for i in sorted(unique)]
        return caption_metrics(preds, refs, self.backend)


# ------------------------------------------------------------------------------------------------------ QA


def normalize_answer(answer: str) -> str:
    """VQA-eval normalisation of a predicted answer (spec §5): :func:`mmzoo.metrics.normalize_vqa_answer`."""
    return normalize_vqa_answer(answer)


def qa_accuracy(preds: Sequence[str], answers: Sequence[str]) -> float:
    """100·mean(normalised prediction == ground-truth answer) (spec §5, open-ended QA)."""
    if len(preds) != len(answers):
        raise ValueError(f"qa_accuracy: {len(preds)} predictions but {len(answers)} answers")
    if not preds:
        raise ValueError("qa_accuracy: no predictions")
    return 100.0 * sum(normalize_answer(p) == a.strip().lower() for p, a in zip(preds, answers)) / len(preds)


def _cat(state) -> torch.Tensor:
    return torch.cat(state) if isinstance(state, list) else state


def _first_of_each_id(ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping the first occurrence of every id ≥ 0 (DistributedSampler pads the last batches with
    repeated items); negative ids (no id given) are always kept."""
    keep = ids < 0
    named = (~keep).nonzero().view(-1)
    keep[named[first_of_each_id(ids[named])]] = True
    return keep


class QAAccuracy(Metric):
    """Open-ended QA accuracy. States are per-question hits and dataset indices (``ids``), concatenated over ranks;
    a question seen twice (DistributedSampler padding) counts once, as the official per-question-id merge does.
    Without any question the accuracy is NaN."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("hits", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self._auto_id = 0

    def update(self, preds: Sequence[str], answers: Sequence[str], ids: Sequence[int] | None = None) -> None:
        if len(preds) != len(answers):
            raise ValueError(f"QAAccuracy: {len(preds)} predictions but {len(answers)} answers")
        hits = [float(normalize_answer(p) == a.strip().lower()) for p, a in zip(preds, answers)]
        if ids is None:  # no ids: every question is distinct
            ids = range(-1 - self._auto_id, -1 - self._auto_id - len(hits), -1)
            self._auto_id += len(hits)
        self.hits.append(torch.tensor(hits, dtype=torch.float32, device=self.device))
        self.ids.append(torch.as_tensor(list(ids), dtype=torch.long, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._auto_id = 0

    def compute(self) -> torch.Tensor:
        if isinstance(self.hits, list) and not self.hits:  # no question seen: not a measured 0 %
            return torch.tensor(float("nan"), device=self.device)
        hits, ids = _cat(self.hits), _cat(self.ids)
        return 100.0 * hits[_first_of_each_id(ids)].mean()


_TYPE_GROUPS = ("C", "T", "D")


def nextqa_accuracy(preds: torch.Tensor, labels: torch.Tensor, types: Sequence[str]) -> dict[str, float]:
    """NExT-QA accuracy overall and per question family = first letter of ``type`` (C causal, T temporal,
    D descriptive), ×100 (spec §5). Groups without questions are omitted."""
    correct = (preds.view(-1) == labels.view(-1)).tolist()
    if len(correct) != len(types):
        raise ValueError(f"nextqa_accuracy: {len(correct)} predictions but {len(types)} types")
    out = {"acc": 100.0 * sum(correct) / max(1, len(correct))}
    for g in _TYPE_GROUPS:
        sel = [c for c, t in zip(correct, types) if t[:1].upper() == g]
        if sel:
            out[f"acc_{g}"] = 100.0 * sum(sel) / len(sel)
    return out


class NExTQAAccuracy(Metric):
    """NExT-QA accuracy overall and per type. States are per-question hits, type groups and dataset indices
    (``ids``), concatenated over ranks; a question seen twice (DistributedSampler padding) counts once. Without any
    question ``acc`` is NaN."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("hits", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")  # 0 other, 1 C, 2 T, 3 D
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self._auto_id = 0

    def update(
        self, preds: torch.Tensor, labels: torch.Tensor, types: Sequence[str], ids: Sequence[int] | None = None
    ) -> None:
        ok = (preds.view(-1) == labels.view(-1)).float().to(self.device)
        if ok.numel() != len(types):
            raise ValueError(f"NExTQAAccuracy: {ok.numel()} predictions but {len(types)} types")
        groups = [1 + _TYPE_GROUPS.index(t[:1].upper()) if t[:1].upper() in _TYPE_GROUPS else 0 for t in types]
        if ids is None:  # no ids: every question is distinct
            ids = range(-1 - self._auto_id, -1 - self._auto_id - ok.numel(), -1)
            self._auto_id += ok.numel()
        self.hits.append(ok)
        self.groups.append(torch.tensor(groups, dtype=torch.long, device=self.device))
        self.ids.append(torch.as_tensor(list(ids), dtype=torch.long, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._auto_id = 0

    def compute(self) -> dict[str, float]:
        if isinstance(self.hits, list) and not self.hits:  # no question seen: NaN, still logged under acc
            return {"acc": float("nan")}
        ids = _cat(self.ids)
        keep = _first_of_each_id(ids)
        hits, groups = _cat(self.hits)[keep], _cat(self.groups)[keep]
        out = {"acc": float(100.0 * hits.mean())}
        for g, name in enumerate(_TYPE_GROUPS, start=1):
            sel = groups == g
            if sel.any():
                out[f"acc_{name}"] = float(100.0 * hits[sel].mean())
        return out
