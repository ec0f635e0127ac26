"""Scene-graph recall metrics (spec §5): graph-constrained R@K and mR@K, no-graph-constraint ng-R@K and
ng-mR@K, and zero-shot zR@K, as a function (:func:`sgg_recall`) plus a ``torchmetrics.Metric``
(:class:`SGRecall`). torchmetrics has no scene-graph metric, so both are written here.

Per image: predicted triplets are matched to GT triplets when subject class, predicate and object class are
equal and both boxes have IoU >= 0.5 ('+1' pixel convention). mR@K is the image-averaged per-predicate recall:
per image and predicate p present in its GT, hits_p / count_p; averaged over the images where p appears (0 if
p never appears); then averaged over all C_rel − 1 predicates.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
from torchmetrics import Metric

from shagcl.models import box_iou

__all__ = ["image_recall_stats", "sgg_recall", "SGRecall", "sort_relations", "write_per_predicate_report"]


def sort_relations(
    rel_probs: torch.Tensor, obj_scores: torch.Tensor, pair_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Post-processing (§3.8): rel_score = max_{c>=1} p_c, rel_class = argmax_{c>=1}, triple score =
    rel_score · s_sub · s_obj; pairs sorted by triple score (descending).

    rel_probs (M, C_rel) softmax incl. background; obj_scores (N,); pair_idx (M, 2) local rows.
    Returns (order (M,), rel_class (M,), triple_score (M,)), rel_class/triple_score already in sorted order.
    """
    rel_score, rel_class = rel_probs[:, 1:].max(-1)  # background never chosen
    rel_class = rel_class + 1
    triple = rel_score * obj_scores[pair_idx[:, 0]] * obj_scores[pair_idx[:, 1]]
    order = triple.argsort(descending=True, stable=True)
    return order, rel_class[order], triple[order]


def _match(gt_boxes, gt_labels, gt_rels, pred_boxes, pred_labels, pred_pairs, pred_classes, iou_threshold):
    """(G, M') bool: GT triplet g matched by predicted triplet m (classes equal, both IoUs >= threshold)."""
    iou = box_iou(gt_boxes.float(), pred_boxes.float())  # (N_gt, N_pred)
    gs, go, gp = gt_rels[:, 0], gt_rels[:, 1], gt_rels[:, 2]
    ps, po = pred_pairs[:, 0], pred_pairs[:, 1]
    same = (
        (gt_labels[gs][:, None] == pred_labels[ps][None, :])
        & (gt_labels[go][:, None] == pred_labels[po][None, :])
        & (gp[:, None] == pred_classes[None, :])
    )  # (G, M')
    boxes_ok = (iou[gs][:, ps] >= iou_threshold) & (iou[go][:, po] >= iou_threshold)  # (G, M')
    return same & boxes_ok


def _hits_at_k(match: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """(G, len(ks)) bool: GT g matched by any of the first K candidates."""
    if match.shape[1] == 0:
        return torch.zeros(match.shape[0], len(ks), dtype=torch.bool, device=match.device)
    cum = match.cumsum(1) > 0  # (G, M') matched within first j+1
    idx = torch.tensor([min(k, match.shape[1]) - 1 for k in ks], device=match.device)
    return cum[:, idx]


def _per_predicate(hits: torch.Tensor, predicates: torch.Tensor) -> torch.Tensor:
    """Rows [p, hits_p/count_p @ each K] for every predicate p present in this image's GT -> (P_img, 1 + len(ks))."""
    rows = []
    for p in predicates.unique():
        sel = predicates == p
        rows.append(torch.cat([p.float()[None], hits[sel].float().mean(0)]))
    return torch.stack(rows) if rows else hits.new_zeros(0, 1 + hits.shape[1], dtype=torch.float)


def image_recall_stats(
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_rels: torch.Tensor,
    pred_boxes: torch.Tensor,
    pred_labels: torch.Tensor,
    obj_scores: torch.Tensor,
    pair_idx: torch.Tensor,
    rel_probs: torch.Tensor,
    ks: Sequence[int] = (20, 50, 100),
    iou_threshold: float = 0.5,
    zero_shot: torch.Tensor | None = None,
) -> dict[str, torch.Tensor] | None:
    """Sufficient statistics of one image; ``None`` when the image has no GT relation (it is skipped).

    gt_boxes (G_obj, 4) xyxy; gt_labels (G_obj,); gt_rels (G, 3) = (sub, obj, predicate) with all test
    triplets; pred_boxes (N, 4); pred_labels (N,); obj_scores (N,); pair_idx (M, 2) local; rel_probs (M, C_rel).
    zero_shot: (G,) bool marking GT triplets never seen in training (for zR@K), or None.

    Returns recall (len(ks),), per_pred (P_img, 1+len(ks)), ng_recall, ng_per_pred, and zs_recall
    (len(ks),) when the image has zero-shot triplets.
    """
    if gt_rels.shape[0] == 0:
        return None
    ks = list(ks)
    order, rel_class, _ = sort_relations(rel_probs.float(), obj_scores.float(), pair_idx)
    pairs = pair_idx[order]
    match = _match(
        gt_boxes, gt_labels, gt_rels, pred_boxes, pred_labels, pairs[: max(ks)], rel_class[: max(ks)], iou_threshold
    )
    hits = _hits_at_k(match, ks)  # (G, len(ks))
    out = {"recall": hits.float().mean(0), "per_pred": _per_predicate(hits, gt_rels[:, 2])}
    # no graph constraint: every (pair, predicate >= 1) scored s_sub · s_obj · p_c; global top-K
    cand = rel_probs[:, 1:].float() * (obj_scores[pair_idx[:, 0]] * obj_scores[pair_idx[:, 1]])[:, None].float()
    top = cand.flatten().topk(min(max(ks), cand.numel())).indices
    ng_pairs = pair_idx[top // cand.shape[1]]
    ng_class = top % cand.shape[1] + 1
    ng_hits = _hits_at_k(
        _match(gt_boxes, gt_labels, gt_rels, pred_boxes, pred_labels, ng_pairs, ng_class, iou_threshold), ks
    )
    out["ng_recall"] = ng_hits.float().mean(0)
    out["ng_per_pred"] = _per_predicate(ng_hits, gt_rels[:, 2])
    if zero_shot is not None and bool(zero_shot.any()):
        out["zs_recall"] = hits[zero_shot].float().mean(0)
    return out


def _aggregate(recall: torch.Tensor, per_pred: torch.Tensor, num_predicates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean R over images (len(ks),) and per-predicate recall (C_rel − 1, len(ks)) averaged over the images
    where each predicate appears (0 where it never appears)."""
    n_k = recall.shape[1] if recall.ndim == 2 else per_pred.shape[1] - 1
    r = recall.mean(0) if recall.numel() else torch.zeros(n_k)
    table = torch.zeros(num_predicates - 1, n_k, device=per_pred.device)
    for p in range(1, num_predicates):
        rows = per_pred[per_pred[:, 0] == p]
        if rows.shape[0]:
            table[p - 1] = rows[:, 1:].mean(0)
    return r, table


def _compute(recall, per_pred, ng_recall, ng_per_pred, zs_recall, num_predicates, ks) -> dict[str, torch.Tensor]:
    r, table = _aggregate(recall, per_pred, num_predicates)
    ng_r, ng_table = _aggregate(ng_recall, ng_per_pred, num_predicates)
    out: dict[str, torch.Tensor] = {}
    for i, k in enumerate(ks):
        out[f"R@{k}"] = r[i]
        out[f"mR@{k}"] = table[:, i].mean()
        out[f"ng-R@{k}"] = ng_r[i]
        out[f"ng-mR@{k}"] = ng_table[:, i].mean()
        if zs_recall.numel():
            out[f"zR@{k}"] = zs_recall[:, i].mean()
    out["per_predicate"] = table
    out["ng_per_predicate"] = ng_table
    return out


def sgg_recall(
    images: Sequence[dict], num_predicates: int, ks: Sequence[int] = (20, 50, 100), iou_threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """R@K, mR@K, ng-R@K, ng-mR@K (and zR@K when ``zero_shot`` is given) over a list of images.

    Each image is a dict with the arguments of :func:`image_recall_stats` (``zero_shot`` optional; an
    ``image_index`` key is ignored). Returns
    scalars ``R@K`` etc. plus ``per_predicate`` (C_rel − 1, len(ks)) recall in predicate order.
    """
    stats = [
        s
        for s in (
            image_recall_stats(
                ks=ks, iou_threshold=iou_threshold, **{k: v for k, v in img.items() if k != "image_index"}
            )
            for img in images
        )
        if s
    ]
    n = len(ks)

    def cat(key: str, width: int) -> torch.Tensor:
        rows = [s[key].reshape(-1, width) for s in stats if key in s]
        return torch.cat(rows) if rows else torch.zeros(0, width)

    return _compute(
        cat("recall", n),
        cat("per_pred", n + 1),
        cat("ng_recall", n),
        cat("ng_per_pred", n + 1),
        cat("zs_recall", n),
        num_predicates,
        ks,
    )


class SGRecall(Metric):
    """Scene-graph recall (R@K, mR@K, ng-R@K, ng-mR@K, zR@K) accumulated image by image.

    ``update(images)`` takes a list of per-image dicts as in :func:`sgg_recall`, plus an optional
    ``image_index`` (int, the dataset index). States are per-image rows tagged with that index and concatenated
    across processes (``dist_reduce_fx="cat"``); ``compute()`` keeps one copy of every index, so the images a
    ``DistributedSampler`` repeats to pad the last batch are counted once (rows without an index, or with a
    negative one, are never merged). Returns the same dict as :func:`sgg_recall`.

    Example:
        >>> m = SGRecall(num_predicates=3, ks=(1,))
        >>> box = torch.tensor([[0., 0., 9., 9.], [20., 20., 29., 29.]])
        >>> img = dict(gt_boxes=box, gt_labels=torch.tensor([1, 2]), gt_rels=torch.tensor([[0, 1, 2]]),
        ...            pred_boxes=box, pred_labels=torch.tensor([1, 2]), obj_scores=torch.ones(2),
        ...            pair_idx=torch.tensor([[0, 1], [1, 0]]), rel_probs=torch.tensor([[.1, .2, .7], [.8, .1, .1]]),
        ...            image_index=0)
        >>> m.update([img, img]); float(m.compute()["R@1"])  # the repeated image counts once
        1.0
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False
    STATES = ("recall", "per_pred", "ng_recall", "ng_per_pred", "zs_recall")

    def __init__(self, num_predicates: int, ks: Sequence[int] = (20, 50, 100), iou_threshold: float = 0.5) -> None:
        super().__init__()
        self.num_predicates = num_predicates
        self.ks = tuple(int(k) for k in ks)
        self.iou_threshold = iou_threshold
        for name in self.STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, images: Sequence[dict]) -> None:
        for img in images:
            img = dict(img)
            index = img.pop("image_index", None)
            s = image_recall_stats(ks=self.ks, iou_threshold=self.iou_threshold, **img)
            if s is None:
                continue
            tag = float(-1 if index is None else int(index))

            def tagged(rows: torch.Tensor, tag: float = tag) -> torch.Tensor:  # prepend the image index column
                rows = rows.reshape(-1, rows.shape[-1]).float()
                return torch.cat([rows.new_full((rows.shape[0], 1), tag), rows], 1)

            self.recall.append(tagged(s["recall"]))
            self.per_pred.append(tagged(s["per_pred"]))
            self.ng_recall.append(tagged(s["ng_recall"]))
            self.ng_per_pred.append(tagged(s["ng_per_pred"]))
            if "zs_recall" in s:
                self.zs_recall.append(tagged(s["zs_recall"]))

    def _cat(self, state, width: int) -> torch.Tensor:
        """Rows (R, 1 + width) [image index, values...] with repeated (index, key) rows dropped -> (R', width).

        The key is the index for one-row-per-image states and (index, predicate) for the per-predicate states
        (a predicate appears once per image)."""
        if isinstance(state, torch.Tensor):
            rows = state.reshape(-1, width + 1)
        else:
            rows = torch.cat(state).reshape(-1, width + 1) if state else torch.zeros(0, width + 1, device=self.device)
        keyed = rows[:, 0] >= 0
        if bool(keyed.any()):
            key_width = 2 if width == len(self.ks) + 1 else 1  # per-predicate rows: (index, predicate)
            keys = rows[keyed][:, :key_width]
            _, inverse = torch.unique(keys, dim=0, return_inverse=True)
            first = torch.full((int(inverse.max()) + 1,), keys.shape[0], dtype=torch.long, device=rows.device)
            first = first.scatter_reduce(0, inverse, torch.arange(keys.shape[0], device=rows.device), "amin")
            rows = torch.cat([rows[~keyed], rows[keyed][first.sort().values]])
        return rows[:, 1:]

    def compute(self) -> dict[str, torch.Tensor]:
        n = len(self.ks)
        return _compute(
            self._cat(self.recall, n),
            self._cat(self.per_pred, n + 1),
            self._cat(self.ng_recall, n),
            self._cat(self.ng_per_pred, n + 1),
            self._cat(self.zs_recall, n),
            self.num_predicates,
            self.ks,
        )


def write_per_predicate_report(
    table: torch.Tensor,
    predicate_names: Sequence[str],
    ks: Sequence[int],
    out_dir: str | Path,
    prefix: str = "per_predicate_recall",
) -> tuple[Path, Path]:
    """Write the per-predicate recall table as CSV and a bar chart PNG (recall@K per predicate, the SGG plot).

    table (C_rel − 1, len(ks)); predicate_names (C_rel,) with background first. Returns (csv_path, png_path).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / f"{prefix}.csv", out_dir / f"{prefix}.png"
    names = list(predicate_names[1:])
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["predicate_id", "predicate", *[f"R@{k}" for k in ks]])
        for i, name in enumerate(names):
            w.writerow([i + 1, name, *[f"{float(v):.4f}" for v in table[i]]])
    col = len(ks) - 1
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(names)), 4))
    ax.bar(range(len(names)), table[:, col].cpu().numpy(), color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel(f"R@{ks[col]}")
    ax.set_title(f"per-predicate recall@{ks[col]} (mR@{ks[col]} = {float(table[:, col].mean()):.3f})")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path
