"""The LightningModule of SHA-GCL: batch → :class:`~shagcl.models.SHAGCL` → GCL losses (+ object loss) → logs;
evaluation with the scene-graph recall metrics; prediction to JSON (and drawings).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_range

from shagcl.gcl import (
    OFFICIAL_PREDICATE_COUNTS,
    VG150_PREDICATES_FREQ_ORDER,
    group_predicates,
    median_resampling_rates,
)
from shagcl.losses import GCLLoss, ObjectLoss
from shagcl.metrics import SGRecall, sort_relations, write_per_predicate_report
from shagcl.models import SHAGCL, SHAGCLConfig, load_glove

__all__ = ["SHAGCLModule"]

log = logging.getLogger(__name__)


class SHAGCLModule(pl.LightningModule):
    """Trains the relation head (the detector is frozen/cached) with the GCL objective.

    Args:
        config: architecture and GCL settings.
        lr: learning rate (the official BASE_LR 0.001 × batch 8 = 0.008, §3.9; set it directly, no batch scaling).
        momentum, weight_decay: SGD; weight decay on weights only (0 on biases and frequency-bias tables), §3.9.
        warmup_steps, warmup_factor: linear warm-up from ``warmup_factor`` over ``warmup_steps`` steps.
        plateau_factor, plateau_patience, plateau_threshold: reduce-on-plateau of the lr on val/mR@100 (×0.1 after
            2 validations without an absolute improvement of 0.001).
        max_lr_reductions: stop training once the lr has been reduced this many times (3).
        recall_ks: K of R@K / mR@K.
        report_dir: where ``test`` writes the per-predicate recall CSV and PNG (null: the trainer's log_dir or
            default_root_dir).
        predict_top_k: triplets kept per image in predictions.
        draw_images: how many predicted scene graphs (the first of each process) ``predict`` draws as PNG, beside
            its JSON-lines file (``--predictions.path``).
    """

    checkpoint_monitor = "val/mR@100"
    checkpoint_mode = "max"

    def __init__(
        self,
        config: SHAGCLConfig | None = None,
        lr: float = 0.008,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_steps: int = 500,
        warmup_factor: float = 0.1,
        plateau_factor: float = 0.1,
        plateau_patience: int = 2,
        plateau_threshold: float = 1e-3,
        max_lr_reductions: int = 3,
        recall_ks: tuple[int, ...] = (20, 50, 100),
        report_dir: str | None = None,
        predict_top_k: int = 20,
        draw_images: int = 1,
    ) -> None:
        super().__init__()
        check_range("model.lr", lr, ge=0)
        check_range("model.momentum", momentum, ge=0, le=1)
        check_range("model.weight_decay", weight_decay, ge=0)
        check_range("model.warmup_steps", warmup_steps, ge=0, integer=True)  # 0: no warm-up
        check_range("model.warmup_factor", warmup_factor, ge=0)
        check_range("model.plateau_factor", plateau_factor, ge=0, le=1)  # the lr is multiplied by it
        check_range("model.plateau_patience", plateau_patience, ge=0, integer=True)
        check_range("model.plateau_threshold", plateau_threshold, ge=0)
        # training stops once the lr was reduced this often: 0 would stop before the first step
        check_range("model.max_lr_reductions", max_lr_reductions, ge=1, integer=True)
        for i, k in enumerate(recall_ks):
            check_range(f"model.recall_ks[{i}]", k, ge=1, integer=True)
        check_range("model.predict_top_k", predict_top_k, ge=1, integer=True)  # a negative k dropped the last ones
        check_range("model.draw_images", draw_images, ge=0, integer=True)  # 0: draw nothing
        # output locations are not stored in checkpoints: LightningCLI would restore them over the command line
        self.save_hyperparameters(ignore=["report_dir", "predict_top_k", "draw_images"])
        self.report_dir = report_dir
        self.predict_top_k, self.draw_images = predict_top_k, draw_images
        self.config = config or SHAGCLConfig()
        if 100 not in recall_ks and self.checkpoint_monitor == "val/mR@100":
            raise ValueError("model.recall_ks must contain 100 (model selection uses val/mR@100)")
        self.model = SHAGCL(self.config)
        self.gcl_loss: GCLLoss | None = None
        self.obj_loss = ObjectLoss()
        self.val_recall = SGRecall(self.config.num_predicates, recall_ks)
        self.test_recall = SGRecall(self.config.num_predicates, recall_ks)
        self.predicate_names = [f"predicate{i}" for i in range(self.config.num_predicates)]
        self.object_names = [f"object{i}" for i in range(self.config.num_obj_classes)]
        self.register_buffer("seen_triplets", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.lr_scale, self.best_metric, self.bad_validations, self.lr_reductions = 1.0, -math.inf, 0, 0
        self._to_draw: list[dict] = []  # the first predicted graphs of this process, drawn at the end
        self._weights_from_checkpoint = False  # the decoder was built by on_load_checkpoint, before any data

    # ------------------------------------------------------------------ set-up from the training statistics
    def setup(self, stage: str) -> None:
        """Build the GCL decoder from the datamodule's training statistics (Lightning calls this before it
        restores a checkpoint, so the restored weights then overwrite the initial values)."""
        if self.gcl_loss is not None:
            return
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None or not hasattr(dm, "statistics"):
            raise ValueError("SHAGCLModule needs an SGGDataModule (the decoder is built from training statistics)")
        if dm.hparams.protocol != self.config.protocol:
            raise ValueError(
                f"data.protocol={dm.hparams.protocol!r} differs from model.config.protocol={self.config.protocol!r}"
            )
        self.build_from_statistics(dm.statistics())

    def build_from_statistics(self, stats) -> None:
        """Grouping, re-sampling rates, decoder, frequency-bias init and word vectors from ``stats``."""
        cfg = self.config
        if len(stats.object_classes) != cfg.num_obj_classes or len(stats.predicate_classes) != cfg.num_predicates:
            raise ValueError(
                f"the data has {len(stats.object_classes)} object / {len(stats.predicate_classes)} predicate classes "
                f"(with background) but model.config.num_obj_classes={cfg.num_obj_classes}, "
                f"num_predicates={cfg.num_predicates}"
            )
        counts = stats.predicate_counts
        if cfg.count_source == "official":
            if stats.dataset not in OFFICIAL_PREDICATE_COUNTS:
                raise ValueError(f"model.config.count_source=official has no list for dataset {stats.dataset!r}")
            counts = torch.tensor(OFFICIAL_PREDICATE_COUNTS[stats.dataset])
            if len(counts) != cfg.num_predicates:
                raise ValueError("model.config.count_source=official needs the full official predicate set")
            if stats.dataset == "vg150" and list(stats.predicate_classes) != VG150_PREDICATES_FREQ_ORDER:
                raise ValueError(
                    "model.config.count_source=official lists the VG150 counts in frequency order (spec §3.6.4), "
                    "but the data's predicates are not in that order: set data.predicate_order=frequency, or "
                    "count_source=computed"
                )
        if cfg.decoder == "single":
            group_sizes = [cfg.num_predicates - 1]
        else:
            group_sizes = group_predicates(
                counts[1:].tolist(), cfg.group_mu, cfg.group_min_count, cfg.group_split, cfg.num_average_groups
            )
        rank_zero_info(f"shagcl: predicate groups {group_sizes}")
        # weights loaded before any data (load_from_checkpoint, then a Trainer): keep them, initialise nothing
        restored = self._weights_from_checkpoint
        if restored and list(group_sizes) != list(self.group_sizes):
            raise ValueError(
                f"the loaded checkpoint was trained with predicate groups {self.group_sizes}, the current "
                f"data/config gives {group_sizes}"
            )
        self.group_sizes = group_sizes
        rates = median_resampling_rates(counts.tolist(), group_sizes)
        if not restored:
            self.model.build_decoder(group_sizes, stats.fg_matrix)
        self.model.decoder.to(self.device)
        single = cfg.decoder == "single"
        self.gcl_loss = GCLLoss(
            group_sizes,
            rates,
            cfg.background_mode,
            "None" if single else cfg.kd_mode,
            cfg.kd_coefficient,
            cfg.no_relation_restrain,
            cfg.no_relation_penalty,
            resample=cfg.resample and not single,
        ).to(self.device)
        self.seen_triplets = (stats.triplet_counts > 0).to(self.device)
        self.predicate_names = list(stats.predicate_classes)
        self.object_names = list(stats.object_classes)
        if restored:
            return
        if cfg.word_embeddings == "glove":
            self.model.context.set_word_vectors(load_glove(cfg.glove_path, self.object_names, cfg.word_dim))
        if cfg.box_head_checkpoint:
            self.model.load_box_head(cfg.box_head_checkpoint)
        elif cfg.trainable_box_head or cfg.union_features == "official":
            rank_zero_info(
                "shagcl: model.config.box_head_checkpoint is null: the relation head's fc6/fc7 start "
                "from random weights (the paper starts them from the detector's box head)"
            )

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if not sum(batch["num_pairs"]):
            raise ValueError(
                f"training batch {batch_idx} (images {batch['image_ids']}) holds no object pair: each of its images "
                "has fewer than 2 objects (a relation of an object with itself is never a pair), so there is "
                "nothing to classify; a larger data.batch_size mixes such images with others"
            )
        out = self.model(batch)
        terms = self.gcl_loss(out.rel_logits, batch["pair_labels"])
        loss = terms["loss"]
        if out.obj_logits is not None:
            terms["obj_loss"] = self.obj_loss(out.obj_logits, batch["labels"])
            loss = loss + terms["obj_loss"]
        if self._several_processes():
            # Only classifiers 1..K_b get a loss (spec §3.6.5), and K_b varies with the batch: a classifier above it
            # would get no gradient on this rank, and DDP (find_unused_parameters=False) would stop at the next
            # step. A zero-weighted term gives it a zero gradient here (its all-reduced gradient is then the other
            # ranks' share). One process keeps the official behaviour (no gradient: SGD skips the classifier).
            loss = loss + sum((logits.float() * 0.0).sum() for logits in out.rel_logits)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at step {self.global_step}: { {k: float(v) for k, v in terms.items()} }"
            )
        bs = len(batch["num_objs"])
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=bs)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        return loss

    def _several_processes(self) -> bool:
        """Training runs in more than one process (DDP), where every rank must give every parameter a gradient."""
        return self._trainer is not None and self._trainer.world_size > 1

    # ------------------------------------------------------------------ evaluation
    def _eval_images(self, batch: dict) -> tuple[list[dict], Any]:
        out = self.model(batch, last_only=True)
        probs = out.rel_logits[-1].float().softmax(-1)  # (M, C_rel) full label space incl. background
        images = []
        for i, (boxes, labels, scores, pairs, rel_probs) in enumerate(
            zip(
                batch["boxes"].split(batch["num_objs"]),
                out.obj_labels.split(batch["num_objs"]),
                out.obj_scores.split(batch["num_objs"]),
                batch["local_pair_idx"],
                probs.split(batch["num_pairs"]),
                strict=True,
            )
        ):
            gl, gr = batch["gt_labels"][i], batch["gt_rels"][i]
            zero_shot = None
            if self.seen_triplets.numel() and len(gr):
                zero_shot = ~self.seen_triplets[gl[gr[:, 0]], gl[gr[:, 1]], gr[:, 2]]
            images.append(
                dict(
                    gt_boxes=batch["gt_boxes"][i],
                    gt_labels=gl,
                    gt_rels=gr,
                    pred_boxes=boxes,
                    pred_labels=labels,
                    obj_scores=scores,
                    pair_idx=pairs,
                    rel_probs=rel_probs,
                    zero_shot=zero_shot,
                    image_index=batch["image_index"][i],
                )
            )
        return images, out

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, _ = self._eval_images(batch)
        self.val_recall.update(images)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images, _ = self._eval_images(batch)
        self.test_recall.update(images)

    def _log_recall(self, metric: SGRecall, stage: str) -> dict:
        result = metric.compute()
        for name, value in result.items():
            if value.numel() == 1:
                self.log(f"{stage}/{name}", value.to(self.device), sync_dist=True, prog_bar=name == "mR@100")
        metric.reset()
        return result

    def on_validation_epoch_end(self) -> None:
        result = self._log_recall(self.val_recall, "val")
        if self.trainer.sanity_checking:
            return
        self._plateau_step(float(result["mR@100"]))

    def on_test_epoch_end(self) -> None:
        result = self._log_recall(self.test_recall, "test")
        # on every rank: Trainer.log_dir broadcasts rank 0's folder, so calling it on rank 0 alone hangs
        out_dir = self.report_dir or self.trainer.log_dir or self.trainer.default_root_dir
        if self.trainer.is_global_zero:
            csv_path, png_path = write_per_predicate_report(
                result["per_predicate"].cpu(), self.predicate_names, self.hparams.recall_ks, out_dir
            )
            rank_zero_info(f"shagcl: per-predicate recall written to {csv_path} and {png_path}")

    # ------------------------------------------------------------------ prediction
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        images, _ = self._eval_images(batch)
        graphs = []
        for i, img in enumerate(images):
            order, rel_class, triple = sort_relations(img["rel_probs"], img["obj_scores"], img["pair_idx"])
            keep = order[: self.predict_top_k]
            pairs = img["pair_idx"][keep]
            labels = img["pred_labels"].tolist()
            graphs.append(
                {
                    "image_id": batch["image_ids"][i],
                    "filename": batch["filenames"][i],
                    "image_size": [int(v) for v in batch["image_sizes"][i].tolist()],
                    "boxes": [[round(float(v), 1) for v in b] for b in img["pred_boxes"].tolist()],
                    "labels": [self.object_names[c] for c in labels],
                    "label_ids": labels,
                    "scores": [round(float(s), 4) for s in img["obj_scores"].tolist()],
                    "triplets": [
                        {
                            "subject": int(s),
                            "object": int(o),
                            "predicate": self.predicate_names[int(p)],
                            "predicate_id": int(p),
                            "score": round(float(sc), 5),
                        }
                        for (s, o), p, sc in zip(
                            pairs.tolist(), rel_class[: len(keep)].tolist(), triple[: len(keep)].tolist(), strict=True
                        )
                    ],
                }
            )
        self._to_draw.extend(graphs[: max(self.draw_images - len(self._to_draw), 0)])
        return graphs

    def prediction_rows(self, prediction: list[dict]) -> list[dict]:
        """``shagcl predict``'s JSON lines (:mod:`mmzoo.predict`): one scene graph per image, as
        :meth:`predict_step` builds it (README, Quickstart)."""
        return prediction

    def on_predict_epoch_start(self) -> None:
        self._to_draw = []

    def on_predict_epoch_end(self) -> None:
        from mmzoo.predict import PredictionWriter

        from shagcl.drawing import draw_scene_graph

        writer = next((c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)), None)
        if writer is None or not self._to_draw:
            return
        dm = self.trainer.datamodule
        image_root = Path(dm.hparams.data_root) / ("vg" if dm.hparams.dataset == "vg150" else "gqa") if dm else None
        for graph in self._to_draw:
            draw_scene_graph(graph, writer.written.parent / f"scene_graph_{graph['image_id']}.png", image_root)
        self._to_draw = []

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        # official make_optimizer rule: no weight decay on any parameter whose name contains "bias", which covers
        # the biases and the frequency-bias tables (decoder.freq_bias.*.table.weight)
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if "bias" in name else decay).append(p)
        opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up from warmup_factor, times the plateau reductions so far."""
        warm = self.hparams.warmup_steps
        alpha = min(step / warm, 1.0) if warm > 0 else 1.0
        return (self.hparams.warmup_factor * (1 - alpha) + alpha) * self.lr_scale

    def _plateau_step(self, value: float) -> None:
        """Reduce-on-plateau on val/mR@100 as the official WarmupReduceLROnPlateau (cooldown 0): a validation that
        does not beat the best by more than ``plateau_threshold`` (absolute) is bad; after ``plateau_patience``
        consecutive bad ones the lr is multiplied by ``plateau_factor`` and the count restarts; training stops once
        the lr has been reduced ``max_lr_reductions`` times."""
        hp = self.hparams
        if value > self.best_metric + hp.plateau_threshold:
            self.best_metric, self.bad_validations = value, 0
            return
        self.bad_validations += 1
        if self.bad_validations >= hp.plateau_patience:
            self.lr_scale *= hp.plateau_factor
            self.lr_reductions += 1
            self.bad_validations = 0
            self._apply_lr_scale()
            rank_zero_info(
                f"shagcl: val/mR@100 plateaued; lr scale now {self.lr_scale:g} "
                f"(reduction {self.lr_reductions}/{hp.max_lr_reductions})"
            )
            if self.lr_reductions >= hp.max_lr_reductions:
                self.trainer.should_stop = True

    def _apply_lr_scale(self) -> None:
        """Write the current lr (warm-up factor × plateau scale) into the optimizer now.

        The LambdaLR scheduler only reads ``lr_scale`` when Lightning steps it, which happens after each training
        batch; a validation (and so a reduction) runs after that step, so without this the first batch after a
        reduction would still train at the old lr, and a checkpoint written by that validation would hold the old lr
        in its optimizer state. The official WarmupReduceLROnPlateau sets the new lr before the next iteration."""
        trainer = self._trainer
        for config in getattr(trainer, "lr_scheduler_configs", None) or []:
            sched = config.scheduler
            if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                continue
            # last_epoch counts the scheduler steps so far, i.e. the index of the next optimizer step
            for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
                group["lr"] = base * self._lr_factor(sched.last_epoch)
            sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]

    def on_train_start(self) -> None:
        """A run resumed from a checkpoint written once the plateau rule had stopped training stays stopped (the
        stop request itself is not part of the checkpoint, the reduction count is)."""
        if self.lr_reductions >= self.hparams.max_lr_reductions:
            rank_zero_info(
                f"shagcl: the lr was already reduced {self.lr_reductions} times (model.max_lr_reductions="
                f"{self.hparams.max_lr_reductions}): training is finished, nothing to resume"
            )
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["shagcl_plateau"] = {
            "lr_scale": self.lr_scale,
            "best": self.best_metric,
            "bad": self.bad_validations,
            "reductions": self.lr_reductions,
            "group_sizes": getattr(self, "group_sizes", None),
            "predicate_names": self.predicate_names,
            "object_names": self.object_names,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restores the plateau rule's state. A module built without data (``SHAGCLModule.load_from_checkpoint``)
        has no decoder yet: it is built here from the checkpoint's predicate groups, so the weights load, and a
        later ``setup`` with a datamodule fills in the loss and the statistics without re-initialising them."""
        state = checkpoint.get("shagcl_plateau")
        if self.model.decoder is None:
            if not (state and state.get("group_sizes")):
                raise ValueError("the checkpoint records no predicate groups (shagcl_plateau.group_sizes)")
            self.group_sizes = list(state["group_sizes"])
            self.model.build_decoder(self.group_sizes)
            self._weights_from_checkpoint = True
            for key in ("predicate_names", "object_names"):
                if state.get(key):
                    setattr(self, key, list(state[key]))
        if state:
            self.lr_scale, self.best_metric = state["lr_scale"], state["best"]
            self.bad_validations, self.lr_reductions = state["bad"], state["reductions"]
            if state.get("group_sizes") and getattr(self, "group_sizes", None) not in (None, state["group_sizes"]):
                raise ValueError(
                    f"checkpoint was trained with predicate groups {state['group_sizes']}, the current "
                    f"data/config gives {self.group_sizes}"
                )


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(SHAGCLModule)
