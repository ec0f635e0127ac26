"""The LightningModule: both streams in training, the temporal stream at inference (spec §3.4–3.5, §5)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_range
from torch import nn
from torchmetrics.classification import MultilabelF1Score

from kevsr.losses import HierarchicalLoss, SelfDistillationLoss
from kevsr.metrics import RPAtAccuracy
from kevsr.models import KEVSRConfig, KEVSRModel, KeywordOffsets, remap_rows

__all__ = ["KEVSRModule"]


class KEVSRModule(pl.LightningModule):
    """J = β^t J^t + β^nt J^nt + β^distill J^distill (spec §3.4); evaluation on the temporal stream S1
    (or on S2 when ``streams: nontemporal``), with the S2 metrics also logged under ``*/s2_*`` when both exist.

    Logged: ``{val,test}/f1_l2`` (headline), ``f1_l1``, ``f1_all`` (both levels concatenated), ``rp90_l2``,
    ``rp90_l1``, ``rp90_all``; train: ``train/loss``, ``train/loss_t``, ``train/loss_nt``, ``train/loss_distill``.
    """

    checkpoint_monitor = "val/f1_l2"
    checkpoint_mode = "max"

    def __init__(
        self,
        config: KEVSRConfig,
        streams: Literal["both", "temporal", "nontemporal"] = "both",
        beta_t: float = 1.0,
        beta_nt: float = 1.0,
        beta_distill: float = 1.0,
        beta1: float = 1.0,
        beta2: float = 1.0,
        nt_beta1: float = 1.0,
        nt_beta2: float = 1.0,
        distill_stop_grad: Literal["none", "nt", "t"] = "none",
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.05,
        rp_accuracy: float = 0.9,
        rp_mode: Literal["threshold", "top1"] = "threshold",
        threshold: float = 0.0,
        consistent_paths: bool = False,
        top_k: int | None = None,
    ) -> None:
        """
        Args:
            config: architecture (spec §3).
            streams: ``both`` (full model), ``temporal`` (MMBT baseline), ``nontemporal`` (the Ours-S2 rows).
            beta_t: β^t, weight of the S1 loss (spec §3.4: 1).
            beta_nt: β^nt, weight of the S2 loss (1).
            beta_distill: β^distill, weight of the self-distillation (1).
            beta1: β1, level-1 weight in J^t and J^distill (1).
            beta2: β2, level-2 weight in J^t and J^distill (1).
            nt_beta1: β1 of the S2 loss (1; 0 = the "Ours-S2 w/o-hier" row).
            nt_beta2: β2 of the S2 loss (1).
            distill_stop_grad: ``none`` mutual distillation, ``nt`` detach S2, ``t`` detach S1 (reconstruction).
            lr: AdamW learning rate (reconstruction 1e-4; grid {1e-1, 3e-4, 1e-4, 3e-5, 1e-5}).
            weight_decay: AdamW weight decay (reconstruction 0.01).
            warmup_ratio: linear warm-up over this fraction of the steps, then constant (reconstruction 5%).
            rp_accuracy: the accuracy constraint of RP@X (0.9).
            rp_mode: RP@90% definition: ``threshold`` (all labels ≥ θ) or ``top1`` (reconstruction).
            threshold: prediction threshold on refined scores (0 = sigmoid 0.5).
            consistent_paths: at prediction, keep a level-2 label only if its parent is predicted.
            top_k: at prediction, each level's K highest refined scores are its labels instead of those above
                ``threshold`` (spec §3.5: top-K or threshold; K is capped at the level's label count); null: the
                threshold. Metrics are unaffected (F1 uses the threshold, RP@90% sweeps it).
        """
        # loss weights of 0 switch a term off; a negative one would maximise it
        for key, value in (
            ("beta_t", beta_t),
            ("beta_nt", beta_nt),
            ("beta_distill", beta_distill),
            ("beta1", beta1),
            ("beta2", beta2),
            ("nt_beta1", nt_beta1),
            ("nt_beta2", nt_beta2),
            ("lr", lr),
            ("weight_decay", weight_decay),
        ):
            check_range(f"model.{key}", value, ge=0)
        check_range("model.warmup_ratio", warmup_ratio, ge=0, le=1)
        # above 1 no threshold qualifies (RP = 0), at 0 every one does (RP = 1)
        check_range("model.rp_accuracy", rp_accuracy, gt=0, le=1)
        check_range("model.threshold", threshold)
        if top_k is not None:
            check_range("model.top_k", top_k, ge=1, integer=True)
        super().__init__()
        self.save_hyperparameters()
        self.config = config
        self.model = KEVSRModel(config, streams)
        self.loss_t = HierarchicalLoss(beta1, beta2)
        self.loss_nt = HierarchicalLoss(nt_beta1, nt_beta2)
        self.loss_distill = SelfDistillationLoss(beta1, beta2, distill_stop_grad)
        self.eval_streams = ["t"] if streams != "nontemporal" else ["nt"]
        if streams == "both":
            self.eval_streams.append("nt")
        l1, l2 = config.num_level1, config.num_level2
        self.metrics = nn.ModuleDict()
        for stage in ("val", "test"):
            for stream in self.eval_streams:
                for level, n in (("l1", l1), ("l2", l2), ("all", l1 + l2)):
                    key = f"{stage}_{stream}_{level}"
                    self.metrics[f"{key}_f1"] = MultilabelF1Score(num_labels=n, average="micro", threshold=0.5)
                    self.metrics[f"{key}_rp"] = RPAtAccuracy(rp_accuracy, rp_mode)
        # the label KG vectors also initialise the trainable label table: set once, never over trained or loaded weights
        self._label_vectors_set = False

    # -------------------------------------------------------------- data-derived buffers (hierarchy, label KG)
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or getattr(dm, "hierarchy", None) is None:
            rank_zero_warn(
                "KEVSRModule: no datamodule with a label hierarchy, so model.parent_index is left as it is (from a "
                "checkpoint or model.set_hierarchy; freshly built it puts every level-2 label under level-1 label 0). "
                "Train with KEVSRDataModule, or call module.model.set_hierarchy(parent_index) first."
            )
            return
        h, cfg = dm.hierarchy, self.config
        if (len(h.level1), len(h.level2)) != (cfg.num_level1, cfg.num_level2):
            raise ValueError(
                f"hierarchy.json has {len(h.level1)} level-1 / {len(h.level2)} level-2 labels but "
                f"model.config.num_level1={cfg.num_level1}, num_level2={cfg.num_level2}"
            )
        self.model.set_hierarchy(h.parent_index)
        nt = self.model.nontemporal
        kg = getattr(dm, "kg", None)
        if nt is not None and kg is not None and kg.dim != cfg.kg_dim:
            raise ValueError(f"model.config.kg_dim={cfg.kg_dim} but data.kg_path has {kg.dim}-d vectors")
        if nt is not None and not self._label_vectors_set:
            # only a fresh module: a second setup (fit, then test in one session) or a module loaded from a checkpoint
            # before any data keeps its label tables, whose KG rows may have trained (freeze_label_kg: false)
            for level, head in ((1, nt.head1), (2, nt.head2)):
                vectors, found = h.label_vectors(dm.kg, level, cfg.kg_dim)
                head.set_label_vectors(vectors, found)
            self._label_vectors_set = True
        if nt is not None and nt.tune_keywords:  # offsets already there (a second setup) are moved by term
            nt.keyword_delta.set_vocabulary(dm.keyword_vocab)
        # every split's first video (each split checks its other videos against its first, KEVSRDataset): a val or
        # test split of other widths would otherwise fail in a matmul shape error naming no file
        for name, split in dm.datasets.items():
            if not len(split):
                continue
            item = split[0]
            widths = {
                "f2d_dim": item["f2d"].shape[-1],
                "f3d_dim": item["f3d"].shape[-1],
                "text_dim": item["text"].shape[-1],
                "region_dim": item["regions"].shape[-1],
            }
            for key, width in widths.items():
                if getattr(cfg, key) != width:
                    raise ValueError(
                        f"model.config.{key}={getattr(cfg, key)} but the {name} feature files have {width}"
                    )
            if nt is not None:  # S2 reads N_r regions and N_k keywords of G-d vectors as the data module pads them
                sizes = {
                    "kg_dim": ("data.kg_dim", item["keywords"].shape[-1]),
                    "num_keywords": ("data.num_keywords", item["keywords"].shape[0]),
                    "num_regions": ("data.num_regions", item["regions"].shape[1]),
                }
                for key, (data_key, size) in sizes.items():
                    if getattr(cfg, key) != size:
                        raise ValueError(f"model.config.{key}={getattr(cfg, key)} but {data_key}={size}")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._label_vectors_set = True  # the checkpoint holds the label tables; a later setup must not reset them
        self._remap_keyword_optimizer_state(checkpoint)

    def _remap_keyword_optimizer_state(self, checkpoint: dict) -> None:
        """Resuming a fit whose data give another keyword vocabulary than the checkpoint's (``freeze_keyword_kg:
        false``): the optimizer's state of the keyword offsets (AdamW's moments, one row per term) is moved by term,
        as :class:`KeywordOffsets` moves the offsets when the state dict is loaded (right after this hook)."""
        nt = self.model.nontemporal
        if nt is None or not nt.tune_keywords or not checkpoint.get("optimizer_states"):
            return
        offsets = nt.keyword_delta
        prefix = next(name for name, m in self.named_modules() if m is offsets) + "."
        saved = KeywordOffsets.saved_vocabulary(checkpoint.get("state_dict", {}), prefix)
        if saved is None or not offsets.vocabulary or saved == offsets.vocabulary:
            return
        params = [p for p in self.parameters() if p.requires_grad]  # configure_optimizers' order
        index = next(i for i, p in enumerate(params) if p is offsets.delta)
        for opt in checkpoint["optimizer_states"]:
            if sum(len(g["params"]) for g in opt.get("param_groups", [])) != len(params):
                continue  # not an optimizer over this module's parameters
            state = opt.get("state", {})
            if index in state:  # a new dict: the inner one may be a live optimizer's (Optimizer.state_dict)
                state[index] = {
                    key: remap_rows(value, saved, offsets.vocabulary)
                    if torch.is_tensor(value) and value.dim() == 2 and value.shape[0] == len(saved)
                    else value
                    for key, value in state[index].items()
                }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A BERT temporal encoder (temporal_init_from_bert): save its architecture with the hyperparameters, so the
        # checkpoint rebuilds it (weights from the state dict) without the BERT folder
        temporal = self.model.temporal
        hparams = checkpoint.get("hyper_parameters")
        if temporal is None or not temporal.uses_bert or not isinstance(hparams, dict) or "config" not in hparams:
            return
        cfg, arch = hparams["config"], temporal.bert_architecture
        if isinstance(cfg, KEVSRConfig):  # a module built in Python
            hparams["config"] = dataclasses.replace(cfg, temporal_bert_config=arch)
        elif isinstance(cfg, dict):  # through the CLI: the parsed config as a dict
            hparams["config"] = {**cfg, "temporal_bert_config": arch}

    # -------------------------------------------------------------- training
    def _check_batch(self, batch: dict) -> None:
        f2d = batch["f2d"]
        if f2d.dim() != 3 or f2d.shape[0] == 0:
            raise ValueError(f"batch['f2d'] must be a non-empty (B, T, D), got {tuple(f2d.shape)}")
        if batch["regions"].shape[:2] != f2d.shape[:2] or batch["region_mask"].shape != batch["regions"].shape[:3]:
            raise ValueError(
                f"regions {tuple(batch['regions'].shape)} / region_mask {tuple(batch['region_mask'].shape)} "
                f"do not match f2d {tuple(f2d.shape)}"
            )

    def compute_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every term of spec §3.4 for one batch, plus the scores of each stream."""
        self._check_batch(batch)
        out = self.model(batch)
        t1, t2 = batch["target1"], batch["target2"]
        zero = batch["f2d"].new_zeros(())
        terms = {"loss_t": zero, "loss_nt": zero, "loss_distill": zero}
        if "t" in out:
            terms["loss_t"] = self.loss_t(out["t"], t1, t2)
        if "nt" in out:
            terms["loss_nt"] = self.loss_nt(out["nt"], t1, t2)
        if "t" in out and "nt" in out and self.hparams.beta_distill != 0:
            terms["loss_distill"] = self.loss_distill(out["t"], out["nt"])
        h = self.hparams
        terms["loss"] = (
            h.beta_t * terms["loss_t"] + h.beta_nt * terms["loss_nt"] + h.beta_distill * terms["loss_distill"]
        )
        terms["scores"] = out
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.compute_losses(batch)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(
                f"non-finite loss at step {self.global_step}: "
                + ", ".join(f"{k}={float(terms[k]):.4g}" for k in ("loss_t", "loss_nt", "loss_distill"))
            )
        bs = batch["f2d"].shape[0]
        for key in ("loss", "loss_t", "loss_nt", "loss_distill"):
            self.log(f"train/{key}", terms[key], batch_size=bs, prog_bar=key == "loss")
        return terms["loss"]

    # -------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict, stage: str) -> None:
        self._check_batch(batch)
        t1, t2 = batch["target1"], batch["target2"]
        for stream in self.eval_streams:
            scores = self.model.forward_temporal(batch) if stream == "t" else self.model.forward_nontemporal(batch)
            s1, s2 = scores["level1"], scores["level2"]
            for level, s, t in (
                ("l1", s1, t1),
                ("l2", s2, t2),
                ("all", torch.cat([s1, s2], 1), torch.cat([t1, t2], 1)),
            ):
                key = f"{stage}_{stream}_{level}"
                # the decision itself (1 / 0), not sigmoid(s − threshold): float32's sigmoid rounds to exactly 0.5
                # for 0 < s − threshold < ~1.2e-7, which the 0.5 cut would count as negative
                positive = (s.float() > self.hparams.threshold).float()
                self.metrics[f"{key}_f1"].update(positive, t.long())
                self.metrics[f"{key}_rp"].update(s, t)

    def _eval_epoch_end(self, stage: str) -> None:
        for stream in self.eval_streams:
            prefix = "" if stream == self.eval_streams[0] else "s2_"
            for level in ("l1", "l2", "all"):
                key = f"{stage}_{stream}_{level}"
                for name in ("f1", "rp"):
                    value = self.metrics[f"{key}_{name}"].compute()
                    self.metrics[f"{key}_{name}"].reset()
                    label = "f1" if name == "f1" else "rp90"
                    self.log(f"{stage}/{prefix}{label}_{level}", value, sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Inference (spec §3.5): S1 only (S2 when trained alone). Returns refined scores and the predicted
        labels (score > threshold, or each level's ``top_k`` highest scores), level-2 optionally filtered to
        predicted parents."""
        scores = (
            self.model.forward_temporal(batch)
            if self.model.temporal is not None
            else self.model.forward_nontemporal(batch)
        )
        pred1 = self._select(scores["level1"])  # (B, L1)
        pred2 = self._select(scores["level2"])  # (B, L2)
        if self.hparams.consistent_paths:
            pred2 = pred2 & pred1[:, self.model.parent_index]
        return {
            "video_id": batch["video_id"],
            "level1": scores["level1"],
            "level2": scores["level2"],
            "pred1": pred1,
            "pred2": pred2,
        }

    def _select(self, scores: torch.Tensor) -> torch.Tensor:
        """Predicted labels of one level (B, L) bool: refined score > ``threshold``, or the ``top_k`` highest."""
        k = self.hparams.get("top_k")
        if k is None:
            return scores > self.hparams.threshold
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (B, K)
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)

    def prediction_rows(self, prediction: dict) -> list[dict]:
        """``kevsr predict``'s JSON lines (:mod:`mmzoo.predict`), one per video: ``video_id``, the predicted
        level-1 and level-2 label names (``pred1``/``pred2`` of :meth:`predict_step`; indices as strings when the
        run has no datamodule) and the refined scores of every label (``level1_scores``/``level2_scores``, in
        hierarchy.json order)."""
        h = getattr(getattr(self.trainer, "datamodule", None), "hierarchy", None)
        names1 = h.level1 if h is not None else [str(i) for i in range(self.config.num_level1)]
        names2 = h.level2 if h is not None else [str(i) for i in range(self.config.num_level2)]
        s1, s2 = prediction["level1"].float().cpu(), prediction["level2"].float().cpu()
        p1, p2 = prediction["pred1"].cpu(), prediction["pred2"].cpu()
        return [
            {
                "video_id": vid,
                "level1": [names1[q] for q in p1[i].nonzero().flatten().tolist()],
                "level2": [names2[q] for q in p2[i].nonzero().flatten().tolist()],
                "level1_scores": [round(v, 5) for v in s1[i].tolist()],
                "level2_scores": [round(v, 5) for v in s2[i].tolist()],
            }
            for i, vid in enumerate(prediction["video_id"])
        ]

    # -------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=h.lr, weight_decay=h.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(h.warmup_ratio * total), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(KEVSRModule)
