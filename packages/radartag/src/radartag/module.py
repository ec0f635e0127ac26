"""The LightningModule: sampled blocks → RADAR → 333·BCE + adversarial losses; evaluation → ranking metrics."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_range
from mmzoo.distributed import is_distributed

from .data import GraphBatch
from .losses import RadarLoss
from .metrics import TaggingMetrics
from .models import Radar, RadarConfig

__all__ = ["RadarModule", "training_batches"]


def training_batches(trainer: pl.Trainer) -> int:
    """Training batches (forward passes) of a fit: the unit of total_step in λ_p's p = k / total_step, whose
    counter k advances once per training forward (spec §3.4; official total_step = ⌈N_train / batch⌉ · epochs).

    ``trainer.num_training_batches`` per epoch for ``trainer.max_epochs`` epochs, or fewer when ``trainer.max_steps``
    (optimizer steps) ends the fit first: an epoch of n batches makes ⌈n / accumulate_grad_batches⌉ optimizer steps,
    so with accumulation the count differs from Lightning's ``estimated_stepping_batches`` (optimizer steps), and
    λ_p would otherwise reach its final value early.
    """
    n, acc = trainer.num_training_batches, trainer.accumulate_grad_batches
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    inf = float("inf")
    by_epochs = inf if max_epochs in (None, -1) or n == inf else n * max(max_epochs, 1)
    by_steps = inf
    if max_steps != -1:
        if n == inf:
            by_steps = max_steps * acc
        else:
            full_epochs, steps_left = divmod(max_steps, max(math.ceil(n / acc), 1))
            by_steps = full_epochs * n + min(steps_left * acc, n)  # the last window of an epoch may be short
    total = min(by_epochs, by_steps)
    if total == inf:
        raise ValueError(f"model.adv_total_step=null takes λ_p's total_step from the length of the fit, but "
                         f"trainer.max_epochs={max_epochs} and trainer.max_steps={max_steps} bound no length: set "
                         "one of them, or model.adv_total_step (training batches, spec §3.4)")  # fmt: skip
    return int(total)


class RadarModule(pl.LightningModule):
    """RADAR micro-video tagging (spec §3).

    Args:
        config: the architecture (:class:`~radartag.models.RadarConfig`); ``num_tags: null`` takes the count from
            the data (label map + extra ontology tags).
        lr / weight_decay: AdamW, constant LR (official 5e-4 / 1e-4).
        bce_weight: weight of the tagging BCE (333).
        lambda0 / adv_gamma: λ_p schedule constants (0.01, 20).
        adv_total_step: total_step of the schedule (official steps_per_epoch × 40), in training batches: the
            schedule's counter k advances once per training forward pass (spec §3.4), so with gradient accumulation
            this is not the number of optimizer steps; null = the batches the fit trains on
            (:func:`training_batches`).
        predict_top_k: tags per video in the rows ``radartag predict`` writes (see :meth:`prediction_rows`).
    """

    checkpoint_monitor = "val/sample_mAP"
    checkpoint_mode = "max"

    def __init__(
        self,
        config: RadarConfig | None = None,
        lr: float = 5e-4,
        weight_decay: float = 1e-4,
        bce_weight: float = 333.0,
        lambda0: float = 0.01,
        adv_gamma: float = 20.0,
        adv_total_step: int | None = None,
        predict_top_k: int = 10,
    ):
        super().__init__()
        check_range("model.lr", lr, ge=0)
        check_range("model.weight_decay", weight_decay, ge=0)
        check_range("model.bce_weight", bce_weight, ge=0)
        # λ_p = λ0·(2 / (1 + exp(−γ·p)) − 1): a negative λ0 or γ turns the reversed gradient around
        check_range("model.lambda0", lambda0, ge=0)
        check_range("model.adv_gamma", adv_gamma, ge=0)
        if adv_total_step is not None:  # null: the length of the fit
            check_range("model.adv_total_step", adv_total_step, ge=1, integer=True)
        # predict_top_k is a run-time output setting: kept out of the checkpoint's hyperparameters, which LightningCLI
        # would otherwise apply over the command line of `predict --ckpt_path ...`
        self.save_hyperparameters(ignore=["predict_top_k"])
        if predict_top_k < 1:
            raise ValueError(f"model.predict_top_k={predict_top_k} must be >= 1")
        self.predict_top_k = predict_top_k
        self.config = config or RadarConfig()
        self.model: Radar | None = Radar(self.config) if self.config.num_tags else None
        self.loss = RadarLoss(bce_weight, lambda0, adv_gamma, adv_total_step)
        self.val_metrics = TaggingMetrics()
        self.test_metrics = TaggingMetrics()

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None:
            return
        num_tags = dm.num_tags
        if self.model is None:
            self.config = replace(self.config, num_tags=num_tags)
            self.model = Radar(self.config)
        elif self.config.num_tags != num_tags:
            raise ValueError(
                f"model.config.num_tags={self.config.num_tags} but the data has {num_tags} tags (label map + extra "
                "ontology tags); set model.config.num_tags to it or to null"
            )
        for key in ("use_follow", "use_topic", "bidirectional_topic", "num_layers"):
            if dm.hparams[key] != getattr(self.config, key):
                raise ValueError(
                    f"data.{key}={dm.hparams[key]} differs from model.config.{key}={getattr(self.config, key)}"
                )
        graph = dm.graph("train")
        for key, node_type, folder in (("video_dim", "video", "video_feat"), ("tag_dim", "tag", "tag_feat_bert")):
            width = graph[node_type].x.shape[1]
            if width != getattr(self.config, key):
                raise ValueError(
                    f"model.config.{key}={getattr(self.config, key)} but the {node_type} features under "
                    f"{str(Path(dm.hparams.dataset_root) / folder)!r} have width {width}; set model.config.{key} "
                    f"to {width}"
                )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["radartag_num_tags"] = self.config.num_tags

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A module built without data (``RadarModule.load_from_checkpoint`` with ``config.num_tags: null``) takes
        its tag count from the checkpoint, so the weights have a model to load into. Under a Trainer, ``setup``
        has already built the model from the data and checks the count against it."""
        if self.model is not None:
            return
        num_tags = checkpoint.get("radartag_num_tags")
        if not num_tags:  # checkpoints written before the count was stored: the tag embedding table's rows
            table = checkpoint.get("state_dict", {}).get("model.embedding.tag_embedding.weight")
            num_tags = None if table is None else int(table.shape[0])
        if not num_tags:
            raise ValueError("the checkpoint records no tag count: pass config.num_tags to load_from_checkpoint")
        self.config = replace(self.config, num_tags=num_tags)
        self.model = Radar(self.config)

    def on_train_start(self) -> None:
        if self.loss.total_step is None:
            self.loss.total_step = training_batches(self.trainer)

    def transfer_batch_to_device(self, batch: GraphBatch, device: torch.device, dataloader_idx: int) -> GraphBatch:
        return batch.to(device)

    def forward(self, batch: GraphBatch):
        return self.model(batch.video_x, batch.tag_x, batch.tag_ids, batch.blocks, batch.num_videos)

    def training_step(self, batch: GraphBatch, batch_idx: int) -> torch.Tensor:
        out = self(batch)
        terms = self.loss(out.scores, batch.labels, out.discriminator_logits)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: {terms}")
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch.num_videos, prog_bar=name == "loss")
        return terms["loss"]

    def validation_step(self, batch: GraphBatch, batch_idx: int) -> None:
        self.val_metrics.update(self(batch).scores, batch.labels)

    def _log_metrics(self, stage: str, metrics: TaggingMetrics) -> None:
        """Log the ranking metrics and the number of evaluation videos without a positive tag (skipped by sample mAP
        and R@k, spec §5; P@k averages over every video, such a video adding 0), also as a log line. When every video
        is skipped, sample mAP, R@k and label mAP are logged as NaN (a mean over no video; the best-checkpoint
        callback ranks NaN last) with a warning, never as 0."""
        for name, value in metrics.compute().items():
            self.log(f"{stage}/{name}", value, sync_dist=True)
        # the metric's sync in compute() is undone afterwards: sum this rank's counts over the ranks once more, so
        # the log line (rank 0) and the logged value both count every rank's videos
        counts = torch.tensor([float(metrics.skipped), float(metrics.skipped + metrics.count)], device=self.device)
        if is_distributed():
            torch.distributed.all_reduce(counts)
        skipped, total = (int(v) for v in counts.tolist())
        self.log(f"{stage}/skipped_videos", float(skipped), sync_dist=True, reduce_fx="max")
        if skipped == total:  # the same summed counts on every rank: all ranks take this branch
            rank_zero_warn(f"radartag {stage}: none of the {total} evaluation videos has a positive tag, so "
                           f"{stage}/sample_mAP, R@k and label_mAP are NaN and P@k is 0 (no data to score); check the "
                           f"tags in kwai_<v>_video_{stage}_list.txt")  # fmt: skip
        elif skipped:
            rank_zero_info(f"radartag {stage}: {skipped} of {total} evaluation videos have no positive tag and are "
                           "skipped by sample mAP and R@k (P@k counts them with a precision of 0)")  # fmt: skip
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def test_step(self, batch: GraphBatch, batch_idx: int) -> None:
        self.test_metrics.update(self(batch).scores, batch.labels)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def predict_step(self, batch: GraphBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        """``scores`` s(v, t) (B, K) of the batch videos and their probabilities ``prob`` σ(s); ``pid`` (B,): their
        pids; ``labels`` (B, K): their tags in the split's list file (0/1)."""
        if batch.pids is None:
            raise ValueError("predict needs the videos' pids: the graph has no video.pid (build it with the data "
                             "module's readers)")  # fmt: skip
        scores = self(batch).scores
        return {"pid": batch.pids, "scores": scores, "prob": torch.sigmoid(scores), "labels": batch.labels}

    def prediction_rows(self, prediction: dict[str, torch.Tensor]) -> list[dict]:
        """One row per video of a predicted batch (what ``radartag predict`` writes, one JSON line each):

        - ``pid``: the video's id in the split's list file (``<pid>.mp4``), also the name of its ``video_feat`` file;
        - ``top_tags``: the ``model.predict_top_k`` (default 10) most probable tags, most probable first, each
          ``{"tag": tag id, "name": tag name, "prob": σ(score)}``; every tag node is ranked (label map and extra
          ontology tags, as in evaluation), ties broken as the P@k / R@k metrics break them (toward the larger id);
        - ``labels``: the tag ids the split's list file gives the video (ascending), ``label_names`` their names.

        Tag ids are line indices of ``label_map_kwai_<v>.txt`` (then the extra ontology tags); names come from the
        datamodule and are left out when predict runs without one.
        """
        dm = self.trainer.datamodule if self._trainer is not None else None
        names = getattr(dm, "tag_names", None)
        prob = prediction["prob"].detach().float().cpu()  # (B, K)
        # ranked by the scores, as the metrics rank: σ rounds scores above ~17 to 1.0 in float32, tying them
        scores = prediction.get("scores", prob).detach().float().cpu()
        k = min(self.predict_top_k, prob.shape[1])
        top = torch.argsort(scores, dim=1, stable=True).flip(1)[:, :k]  # (B, k) the metrics' ranking
        top_p = torch.gather(prob, 1, top)
        labels = prediction["labels"].detach().cpu() > 0  # (B, K)
        rows = []
        for i, pid in enumerate(prediction["pid"].tolist()):
            tags = [{"tag": t, **({"name": names[t]} if names else {}), "prob": p}
                    for t, p in zip(top[i].tolist(), top_p[i].tolist())]  # fmt: skip
            true = labels[i].nonzero().flatten().tolist()
            row = {"pid": pid, "top_tags": tags, "labels": true}
            if names:
                row["label_names"] = [names[t] for t in true]
            rows.append(row)
        return rows

    def configure_optimizers(self):
        """AdamW with a constant learning rate (official, spec §3.7), over the trainable parameters (the modules an
        ablation never uses are frozen, see :meth:`~radartag.models.Radar.unused_parameters`)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(RadarModule)
