"""The LightningModule: batch → SHE-Net features → symmetric InfoNCE (training); features of the whole split →
chunked text × video similarity → retrieval metrics (validation/test)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from mmzoo.distributed import rank_and_world

from shenet.losses import SHENetContrastiveLoss
from shenet.metrics import RetrievalMetrics
from shenet.models import SHENet, SHENetConfig, TextFeatures, VideoFeatures
from shenet.optim import BertAdam, param_groups, warmup_cosine

__all__ = ["SHENetModule"]


def _cat(feats: list):
    first = feats[0]
    names = first.__dataclass_fields__
    return type(first)(**{n: torch.cat([getattr(f, n) for f in feats]) for n in names})


class SHENetModule(pl.LightningModule):
    """SHE-Net training and evaluation (spec §3.7-3.8, §3.10).

    Args:
        config: the architecture (:class:`~shenet.models.SHENetConfig`).
        lr: learning rate of new parameters (spec §3.10: 1e-4).
        coef_lr: CLIP parameters train at ``lr · coef_lr`` (spec: 1e-3).
        weight_decay: decoupled weight decay (spec: 0.2; not on ``bias``/``LayerNorm.`` names).
        warmup_proportion: linear warm-up share of the steps, then cosine decay (spec: 0.1).
        betas: Adam moments (spec: (0.9, 0.98)).
        eps: Adam epsilon (spec: 1e-6).
        max_grad_norm: per-tensor gradient clipping (spec: 1.0, CLIP4Clip's BertAdam).
        aux_weight: β of the per-level loss terms (spec §3.7: 0).
        eval_text_chunk: texts per block of the evaluation similarity (spec §3.8: 32).
        eval_video_chunk: videos per block of the evaluation similarity.
        eval_feature_dtype: dtype of the stored evaluation features (spec §3.8: float16 patches).
    """

    checkpoint_monitor = "val/t2v_R@1"
    checkpoint_mode = "max"

    def __init__(
        self,
        config: SHENetConfig | None = None,
        lr: float = 1e-4,
        coef_lr: float = 1e-3,
        weight_decay: float = 0.2,
        warmup_proportion: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        max_grad_norm: float = 1.0,
        aux_weight: float = 0.0,
        eval_text_chunk: int = 32,
        eval_video_chunk: int = 256,
        eval_feature_dtype: str = "float16",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.config = config or SHENetConfig()
        if eval_feature_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"eval_feature_dtype={eval_feature_dtype!r}: float16, bfloat16 or float32 expected")
        self.model = SHENet(self.config)
        self.loss = SHENetContrastiveLoss(aux_weight)
        self.val_metrics = RetrievalMetrics()
        self.test_metrics = RetrievalMetrics()
        self._eval: dict[str, list] = {}

    # -- training -----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        B = batch["video"].shape[0]
        if batch["text_input_ids"].shape[0] != B:
            raise ValueError(
                f"training batches pair one caption with each video; got {batch['text_input_ids'].shape[0]} "
                f"captions for {B} videos"
            )
        text = self.model.encode_text(batch)  # TextFeatures (B, ...)
        video = self.model.encode_video(batch["video"], batch["video_mask"])  # VideoFeatures (B, ...)
        losses = self.loss(text, video, self.model.similarity, self.model.logit_scale)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=B, prog_bar=name == "loss")
        self.log("train/logit_scale", self.model.logit_scale.detach(), batch_size=B)
        return losses["loss"]

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.model.named_parameters(), hp.lr, hp.coef_lr, hp.weight_decay)
        opt = BertAdam(
            groups,
            lr=hp.lr,
            betas=tuple(hp.betas),
            eps=hp.eps,
            weight_decay=hp.weight_decay,
            max_grad_norm=hp.max_grad_norm,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, hp.warmup_proportion))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation ---------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict) -> None:
        dtype = getattr(torch, self.hparams.eval_feature_dtype)

        def store(x):
            return x.detach().to("cpu", dtype) if x.is_floating_point() else x.detach().cpu()

        text = self.model.encode_text(batch).apply(store)
        video = self.model.encode_video(batch["video"], batch["video_mask"]).apply(store)
        self._eval.setdefault("text", []).append(text)
        self._eval.setdefault("video", []).append(video)
        self._eval.setdefault("text_ids", []).append(batch["text_ids"].cpu())
        self._eval.setdefault("text_video", []).append(batch["video_index"][batch["caption_video"]].cpu())
        self._eval.setdefault("video_index", []).append(batch["video_index"].cpu())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def _gathered(self):
        """All ranks' evaluation features, duplicates removed, texts ordered by id and videos by index."""
        local = {k: (_cat(v) if k in ("text", "video") else torch.cat(v)) for k, v in self._eval.items()}
        self._eval = {}
        _, world = rank_and_world()
        if world > 1:  # evaluation only: unequal shard sizes, so gather Python objects
            parts = [None] * world
            dist.all_gather_object(parts, local)
            local = {
                k: (_cat([p[k] for p in parts]) if k in ("text", "video") else torch.cat([p[k] for p in parts]))
                for k in local
            }
        vid_order, vid_keep = _unique(local["video_index"])
        txt_order, txt_keep = _unique(local["text_ids"])
        video: VideoFeatures = local["video"].apply(lambda x: x[vid_order][vid_keep])
        video_ids = local["video_index"][vid_order][vid_keep]
        text: TextFeatures = local["text"].apply(lambda x: x[txt_order][txt_keep])
        text_ids = local["text_ids"][txt_order][txt_keep]
        text_video = local["text_video"][txt_order][txt_keep]
        # the gallery is the sorted video indices; map each text's video index to its gallery position
        position = torch.full((int(video_ids.max()) + 1,), -1, dtype=torch.long)
        position[video_ids] = torch.arange(len(video_ids))
        query_gt = position[text_video]
        if bool((query_gt < 0).any()):
            raise RuntimeError("evaluation: a text's video is missing from the gathered gallery")
        return text, video, text_ids, query_gt

    def _eval_epoch_end(self, stage: str, metric: RetrievalMetrics) -> None:
        if not self._eval:
            return
        text, video, text_ids, query_gt = self._gathered()
        rank, world = rank_and_world()
        rows = torch.arange(rank, len(text), world)  # this rank's share of the query rows
        sub = text.apply(lambda x: x[rows])
        scores = self.model.similarity_matrix(
            sub,
            video,
            self.hparams.eval_text_chunk,
            self.hparams.eval_video_chunk,
            device=self.device,
            progress=rank == 0,
        )
        # similarity_matrix returns CPU scores; the metric's cross-rank sync (all_gather) needs tensors on the
        # process group's device (NCCL has no CPU backend), so hand it everything on this module's device
        metric.update(scores.to(self.device), query_gt[rows].to(self.device), text_ids[rows].to(self.device))
        results = metric.compute()
        metric.reset()
        for name, value in results.items():
            self.log(f"{stage}/{name}", value.to(self.device), sync_dist=True)
        rank_zero_info(
            f"{stage}: {len(text)} queries x {len(video)} videos: "
            + ", ".join(f"{k}={float(v):.2f}" for k, v in results.items())
        )

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Sentence and video embeddings of a batch (the pair-dependent S needs all features; see ``test``)."""
        text = self.model.encode_text(batch)
        video = self.model.encode_video(batch["video"], batch["video_mask"])
        return {
            "text_ids": batch["text_ids"],
            "sentence": text.sentence,
            "video_index": batch["video_index"],
            "video": video.video,
        }


def _unique(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort order of ``ids`` and a mask keeping the first of each repeated id."""
    order = torch.argsort(ids, stable=True)
    s = ids[order]
    keep = torch.ones_like(s, dtype=torch.bool)
    keep[1:] = s[1:] != s[:-1]
    return order, keep
