"""The LightningModule: windows → model → TwinNet loss (training); streamed scores → post-processing → metrics."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_range

from .data import eval_windows
from .losses import TpnType, TSGSVLoss, kd_weight_schedule
from .metrics import (
    GroundingEvalConfig,
    StreamingGroundingMetrics,
    average_precision,
    calibrated_average_precision,
    streaming_proposals,
)
from .models import StreamingTSGV, TSGSVConfig

__all__ = ["TSGSVModule"]


class TSGSVModule(pl.LightningModule):
    """Streaming temporal sentence grounding (TwinNet + language-guided compressor), spec §3.

    Args:
        config: the model architecture (:class:`~tsgsv.models.TSGSVConfig`).
        evaluation: post-processing and metric settings (:class:`~tsgsv.metrics.GroundingEvalConfig`).
        lr / weight_decay: AdamW (ANet 1e-5 / 5e-4).
        warmup_epochs: linear warm-up from ``warmup_start_factor``·lr over this many epochs (ANet 4, MAD 6).
        warmup_start_factor: 0.1 (official).
        flat_fraction: the LR stays flat until this fraction of all steps, then cosine-decays to 0 (0.4).
        tpn_type: ``KD`` (distil the twin's probabilities, paper) or ``twinnet`` (feature regression ablation).
        kd_weight: λ of the distillation term (ANet 0.4, TACoS/MAD 0.2). With ``model.config.future_usage != 'twin'``
            only the main span loss is used.
        kd_warmup: warm λ up per step as λ·(2/(1+e^{−10p}) − 1), p = step / total steps (the official, unused hook,
            spec §3.8; False in every official config). Logged as ``train/kd_weight``.
        focal_gamma: γ of the focal BCE (3).
        channel_weights: (start, end, sem) loss weights (0.5, 0.5, 1.0).
        eval_window_batch: test windows per forward pass (official val batch 256 / 128).
        selection_metric: metric logged as ``val/selection`` for checkpointing (ANet/TACoS R@1,IoU=0.5; MAD
            R@1,IoU=0.3).
    """

    checkpoint_monitor = "val/selection"
    checkpoint_mode = "max"

    def __init__(
        self,
        config: TSGSVConfig | None = None,
        evaluation: GroundingEvalConfig | None = None,
        lr: float = 1e-5,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 4.0,
        warmup_start_factor: float = 0.1,
        flat_fraction: float = 0.4,
        tpn_type: TpnType = "KD",
        kd_weight: float = 0.4,
        kd_warmup: bool = False,
        focal_gamma: float = 3.0,
        channel_weights: tuple[float, float, float] = (0.5, 0.5, 1.0),
        eval_window_batch: int = 256,
        selection_metric: str = "R@1,IoU=0.5",
    ):
        for key, value in (("lr", lr), ("weight_decay", weight_decay), ("warmup_epochs", warmup_epochs)):
            check_range(f"model.{key}", value, ge=0)
        check_range("model.warmup_start_factor", warmup_start_factor, ge=0)  # a negative factor: a negative LR
        check_range("model.flat_fraction", flat_fraction, ge=0, le=1)
        check_range("model.eval_window_batch", eval_window_batch, ge=1, integer=True)
        super().__init__()
        self.save_hyperparameters()
        self.config = config or TSGSVConfig()
        if tpn_type == "twinnet" and self.config.future_usage != "twin":
            raise ValueError(
                f"model.tpn_type=twinnet regresses the twin branch's features, which needs model.config.future_usage="
                f"twin (got {self.config.future_usage!r}); use tpn_type KD without a twin branch"
            )
        self.eval_config = evaluation or GroundingEvalConfig()
        self.model = StreamingTSGV(self.config)
        self.loss = TSGSVLoss(self.config.hidden_dim, tpn_type, kd_weight, focal_gamma, tuple(channel_weights))
        self.val_metrics = StreamingGroundingMetrics(self.eval_config)
        self.test_metrics = StreamingGroundingMetrics(self.eval_config)
        names = [f"R@{n},IoU={m:g}" for n in self.eval_config.recall_at for m in self.eval_config.iou_thresholds]
        if selection_metric not in names + ["mAP", "mcAP"]:
            raise ValueError(f"model.selection_metric={selection_metric!r} is not one of {names + ['mAP', 'mcAP']}")

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        for key in ("short_memory", "long_memory", "future_memory", "max_text_len"):
            if dm.hparams[key] != getattr(self.config, key):
                raise ValueError(
                    f"data.{key}={dm.hparams[key]} differs from model.config.{key}={getattr(self.config, key)}"
                )
        for dataset in (getattr(dm, "train_set", None), getattr(dm, "val_set", None), getattr(dm, "test_set", None)):
            files = getattr(dataset, "files", None)
            if files is None or not files.annotations:
                continue
            # the files checked every video's width and the first sentence's; every later sentence read is checked
            files.expect_width("video", self.config.video_dim, "video_dim")
            files.expect_width("text", self.config.text_dim, "text_dim")

    # ----------------------------------------------------------------------------------------- training
    def current_kd_weight(self) -> float:
        """λ for the current step: the configured λ, or with ``kd_warmup`` λ·(2/(1+e^{−10p}) − 1), p = global_step /
        the trainer's estimated total steps."""
        if not self.hparams.kd_warmup:
            return self.hparams.kd_weight
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return kd_weight_schedule(self.hparams.kd_weight, self.global_step / total)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        use_future = self.config.future_usage == "twin"
        out = self.model(
            batch["short"], batch["short_mask"], batch["long"], batch["long_mask"], batch["sentence"],
            batch["sentence_length"], batch["future"] if use_future else None,
            batch["future_mask"] if use_future else None,
        )  # fmt: skip
        kd_weight = self.current_kd_weight()
        terms = self.loss(out, batch["labels"], batch["short_mask"], kd_weight)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: {terms}")
        B = batch["short"].shape[0]
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=B, prog_bar=name == "loss")
        self.log("train/kd_weight", kd_weight, batch_size=B)
        # training-time log only (spec §5): AP/cAP of σ(x_main[:, last, sem]) vs y_sem[:, last] > 0.3, every batch; a
        # batch without a positive scores 1 (the §5 convention, as the official predictor logs it)
        last_prob = torch.sigmoid(out.logits[:, -1, 2].detach().float()).cpu()
        last_label = (batch["labels"][:, -1, 2] > 0.3).long().cpu()
        self.log("train/AP_last", average_precision(last_prob, last_label), batch_size=B)
        self.log("train/cAP_last", calibrated_average_precision(last_prob, last_label), batch_size=B)
        return terms["loss"]

    # ----------------------------------------------------------------------------------------- streaming eval
    @torch.no_grad()
    def stream_scores(self, video: torch.Tensor, sentence: torch.Tensor, sentence_length: torch.Tensor) -> torch.Tensor:
        """Streamed probabilities of one annotation (spec §3.9 step 1): for t = 0, k, 2k, … < N (k =
        ``model.evaluation.chunk_interval``) the causal model scores the window ending at t; p(t) = σ(x_main[last]).

        video (N, d_v), sentence (L, d_s), sentence_length () -> (T', 3) (start, end, sem) in time order.
        Windows are batched ``eval_window_batch`` at a time; the sentence is encoded once.
        """
        c = self.config
        query_tokens, query = self.model.encode_sentence(sentence[None], sentence_length.reshape(1))  # (1, L, h)
        times = torch.arange(0, video.shape[0], self.eval_config.chunk_interval, device=video.device)
        out = []
        for chunk in times.split(self.hparams.eval_window_batch):
            w = eval_windows(video, chunk, c.short_memory, c.long_memory)
            W = len(chunk)
            enc = (query_tokens.expand(W, -1, -1), query.expand(W, -1))
            logits = self.model(w["short"], w["short_mask"], w["long"], w["long_mask"], encoded_sentence=enc).logits
            out.append(torch.sigmoid(logits[:, -1].float()))  # (W, 3)  the current (last) position
        return torch.cat(out)

    def _evaluate(self, batch: list[dict], metric: StreamingGroundingMetrics) -> None:
        for item in batch:
            scores = self.stream_scores(item["video"].to(self.device), item["sentence"].to(self.device),
                                        item["sentence_length"].to(self.device))  # fmt: skip
            metric.update([scores], [item["duration"]], [item["target"]], [item["num_frames"]], [item["anno_index"]])

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        results = self.val_metrics.compute()
        for name, value in results.items():
            self.log(f"val/{name}", value, sync_dist=True)
        self.log("val/selection", results[self.hparams.selection_metric], sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_metrics.compute().items():
            self.log(f"test/{name}", value, sync_dist=True)
        self.test_metrics.reset()

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        """Per annotation: anno_id, streamed scores (T', 3), ranked moments (K, 3) (start_sec, end_sec, score) and
        the annotation's video, query, duration and frame count (for :meth:`prediction_rows`)."""
        out = []
        for item in batch:
            scores = self.stream_scores(item["video"].to(self.device), item["sentence"].to(self.device),
                                        item["sentence_length"].to(self.device)).cpu()  # fmt: skip
            moments = streaming_proposals(scores, item["duration"], self.eval_config)
            out.append({"anno_id": item["anno_id"], "scores": scores, "moments": moments,
                        "video": item.get("video_name"), "query": item.get("query"),
                        "duration": float(item["duration"]), "num_frames": int(item["num_frames"])})  # fmt: skip
        return out

    def prediction_rows(self, prediction: list[dict]) -> list[dict]:
        """``tsgsv predict``'s JSON lines (:mod:`mmzoo.predict`), one per annotation (fields: README, "Predictions")."""
        return [
            {
                "anno_id": p["anno_id"],
                "video": p["video"],
                "query": p["query"],
                "duration": p["duration"],
                "num_frames": p["num_frames"],
                "chunk_interval": self.eval_config.chunk_interval,
                "moments": [[round(float(v), 6) for v in m] for m in p["moments"]],
                "scores": [[round(float(v), 6) for v in row] for row in p["scores"]],
            }  # fmt: skip
            for p in prediction
        ]

    # ----------------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        """AdamW; per-step LR: linear warm-up from 0.1·lr over ``warmup_epochs`` epochs of optimizer steps, flat until
        ``flat_fraction`` of all steps, cosine to 0 (official schedule, spec §3.11)."""
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = hp.warmup_epochs * self._steps_per_epoch(total)
        flat_end = max(hp.flat_fraction * total, warmup)

        def factor(step: int) -> float:
            if step < warmup:
                return hp.warmup_start_factor + (1 - hp.warmup_start_factor) * step / warmup
            if step < flat_end:
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - flat_end) / max(total - flat_end, 1))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self, total: int) -> float:
        """Optimizer steps in one training epoch: the epoch's batches (after ``limit_train_batches`` and the
        distributed split) over ``accumulate_grad_batches``, rounded up (Lightning also steps on an epoch's last,
        incomplete accumulation). Not ``total / max_epochs``: ``max_steps`` can end the run before ``max_epochs``
        (or with ``max_epochs`` unset), which would shrink or stretch the warm-up's epochs."""
        trainer = self.trainer
        if trainer.train_dataloader is None:  # estimated_stepping_batches skips loading it when max_epochs is -1
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if math.isfinite(batches):
            return max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
        return total / max(trainer.max_epochs or 1, 1)  # a loader without a length: no epoch size to go by


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(TSGSVModule)
