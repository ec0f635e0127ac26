"""The LightningModule of anti-stereotype (counter-stereotype) debiasing, ASD / CSD (spec §3).

One training epoch:
  1. :meth:`ASDModule.prepare_epoch` (run by the DataModule's ``train_dataloader`` before the epoch's loader is built,
     else by ``on_train_epoch_start``): re-estimate the model's Skew table on the training images (§3.2, §3.3), turn
     it into a per-sample Skew, and (``resample``) build the epoch's index list by bias-aware resampling (§3.4); by
     default the epoch is exactly that list (``debias.epoch_length: resampled``);
  2. ``training_step``: batch → MLLM → per-sample autoregressive loss → SFLoss ``exp(-Skew)`` rescaling (§3.5).
Validation/test score every evaluation image against its concept(s) with the yes/no scorer and report
MaxSkew/MinSkew per attribute type (§5), concept accuracy and the answer loss.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_choice, check_literal_fields, check_range
from mmzoo.data import read_jsonl, reload_train_loader_every_epoch
from mmzoo.distributed import is_distributed, restore_output_capture
from mmzoo.metrics import IndexedMean
from mmzoo.predict import predict_dataset
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .data import EvalSetInfo, load_image
from .losses import SocialFairnessLoss, autoregressive_loss
from .metrics import (
    SkewMetric,
    VQAAccuracy,
    max_min_skew,
    multiple_choice_accuracy,
    per_sample_skew,
    skew_table,
)
from .models import MLLMConfig, MultimodalLLM
from .sampling import bias_aware_resample

__all__ = ["SkewConfig", "DebiasConfig", "GeneralEvalConfig", "ASDModule"]

log = logging.getLogger(__name__)

Scheduler = Literal["cosine", "constant"]


@dataclass
class SkewConfig:
    """How bias is measured (spec §3.2, §3.3). All of it is Reconstruction except the Skew formula."""

    scorer: Literal["yes_prob", "answer_logprob"] = "yes_prob"
    """MLLM relevance score s(x, c): p(Yes)/(p(Yes)+p(No)) of the yes/no probe, or the concept answer's mean log-prob."""
    mode: Literal["topk", "rate"] = "topk"
    """``topk``: Skew@K of the ranking (SocialCounterfactuals); ``rate``: ln P(ĉ=c|a)/P(ĉ=c) of argmax assignments."""
    topk: float = 0.25
    """K: an integer ≥ 1, or a fraction f giving K = max(|A_τ|, round(f·N_c))."""
    fairface_topk: float | None = 1000
    """K of the FairFace pools (spec §3.2: the whole validation set per concept, K = 1000, the MaxSkew@1000
    convention); same forms as ``topk``; ``None`` uses ``topk``."""
    zero_count: Literal["official_zero", "laplace"] = "laplace"
    """A value absent from the top K: 0 (official code) or Laplace smoothing."""
    alpha: float = 1.0
    """Laplace smoothing α."""
    clip: float = 3.0
    """Skew is clipped to [-clip, clip] so that exp(-Skew) stays finite."""
    per_sample: Literal["signed_max_abs", "max", "min"] = "signed_max_abs"
    """Per-sample Skew over attribute types: the signed value of largest magnitude (default), max or min."""
    concept_chunk: int = 32
    """Concepts scored per forward pass (memory knob of the scorer)."""

    def __post_init__(self) -> None:
        for key in ("topk", "fairface_topk"):
            k = getattr(self, key)
            if k is not None and (k <= 0 or (k >= 1 and k != int(k))):
                raise ValueError(f"model.skew.{key}={k}: a fraction in (0, 1) or a positive integer")
        if self.topk is None:
            raise ValueError("model.skew.topk must be set")
        check_range("model.skew.clip", self.clip, gt=0)
        check_range("model.skew.alpha", self.alpha, gt=0)
        check_range("model.skew.concept_chunk", self.concept_chunk, ge=1, integer=True)
        # an unknown scorer would fall to answer_logprob
        check_literal_fields(self, "model.skew")


@dataclass
class DebiasConfig:
    """Which debiasing runs (spec §3.4, §3.5): ASD/CSD = resampling + SFLoss; FT = neither (the ablation switches)."""

    method: Literal["asd", "csd", "ft"] = "asd"
    """``asd`` (v1 name) and ``csd`` (v2 name) are the same method; ``ft`` is plain fine-tuning."""
    resample: bool | None = None
    """Bias-aware resampling; ``None`` follows ``method`` (on for asd/csd, off for ft)."""
    sfloss: bool | None = None
    """SFLoss rescaling exp(-Skew); ``None`` follows ``method``."""
    tau1: float = 1.0
    """τ1 of the drop probability Skew/(Skew+τ1) (spec §3.4)."""
    tau2: float = 1.0
    """τ2, the AcmSkew threshold for an extra copy (spec §3.4)."""
    token_reduction: Literal["mean", "sum"] = "mean"
    """Per-sample loss over answer tokens: mean (default, Reconstruction) or the paper's written sum."""
    normalize_weights: bool = False
    """Divide the SFLoss weights by their batch mean (Reconstruction, off)."""
    refresh_every_n_epochs: int = 1
    """Skew table refresh period in epochs (spec §3.3: every epoch)."""
    epoch_length: Literal["resampled", "nominal"] = "resampled"
    """With resampling: an epoch is one pass over the resampled list, whose length varies (spec §3.4, default), or
    the list truncated/cycled to ``len(train set)`` (``nominal``: fixed epoch length). The LR schedule counts steps
    of the nominal epoch either way (spec §3.4)."""
    seed: int = 0
    """Seed of the resampling draws (offset by the epoch; identical on every rank)."""

    def __post_init__(self) -> None:
        check_range("model.debias.tau1", self.tau1, gt=0)
        check_range("model.debias.tau2", self.tau2, gt=0)
        check_range("model.debias.refresh_every_n_epochs", self.refresh_every_n_epochs, ge=1, integer=True)
        check_literal_fields(self, "model.debias")

    @property
    def use_resample(self) -> bool:
        return self.method != "ft" if self.resample is None else self.resample

    @property
    def use_sfloss(self) -> bool:
        return self.method != "ft" if self.sfloss is None else self.sfloss


@dataclass
class GeneralEvalConfig:
    """General-ability check at test time (spec §4.5): a small local VQA or multiple-choice JSONL file."""

    file: str | None = None
    """JSONL: ``{"image", "question", "answers": [10]}`` (VQA) or ``{"image", "question", "options": {A..D}, "answer"}``."""
    image_root: str | None = None
    """Folder the ``image`` paths are relative to (default: the JSONL's folder)."""
    max_questions: int | None = None
    """Evaluate at most this many questions."""
    max_new_tokens: int = 10
    """Greedy generation length."""

    def __post_init__(self) -> None:
        if self.max_questions is not None:  # 0 keeps every question, a negative bound would drop the last ones
            check_range("model.general_eval.max_questions", self.max_questions, ge=0, integer=True)
        check_range("model.general_eval.max_new_tokens", self.max_new_tokens, ge=1, integer=True)


def _check_general_record(path: Path, lineno: int, rec: dict, root: Path) -> None:
    """Refuse a general-ability record whose fields would fail in the middle of generation or score silently wrong:
    a question or image that is not a string, an image file that is missing, VQA ``answers`` that are not a non-empty
    list of strings (a bare string would be compared letter by letter), multiple-choice ``options`` that are not an
    object of letter → text, and an ``answer`` that is none of the option letters (it could never be matched)."""
    where = f"{path}: line {lineno}"
    if not isinstance(rec["question"], str):
        raise ValueError(f"{where}: 'question' must be a string, got {rec['question']!r}")
    if not isinstance(rec["image"], str) or not (root / rec["image"]).is_file():
        raise FileNotFoundError(f"{where}: image {rec['image']!r} is not a file under {str(root)!r} "
                                "(model.general_eval.image_root)")  # fmt: skip
    if "answers" in rec:
        answers = rec["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{where}: 'answers' must be a non-empty list of answer strings (the annotators' "
                             f"answers), got {answers!r}")  # fmt: skip
        return
    options = rec.get("options")
    if not isinstance(options, dict) or not options or not all(isinstance(k, str) for k in options):
        raise ValueError(f"{where}: a multiple-choice record needs 'options', an object of option letter -> text, "
                         f"got {options!r}")  # fmt: skip
    letters = {k.strip().upper() for k in options}
    answer = rec["answer"]
    if not isinstance(answer, str) or answer.strip().upper() not in letters:
        raise ValueError(f"{where}: 'answer' {answer!r} is not one of the option letters {sorted(letters)}; give the "
                         "letter of the right option")  # fmt: skip


class ASDModule(pl.LightningModule):
    """Fine-tunes an MLLM with bias-aware resampling and SFLoss (ASD/CSD) or plainly (FT)."""

    checkpoint_monitor = "val/loss"
    checkpoint_mode = "min"

    def __init__(
        self,
        mllm: MLLMConfig | None = None,
        debias: DebiasConfig | None = None,
        skew: SkewConfig | None = None,
        general_eval: GeneralEvalConfig | None = None,
        lr: float = 5e-7,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.03,
        scheduler: Scheduler = "cosine",
        concept_accuracy: bool = True,
    ) -> None:
        """
        Args:
            mllm: the MLLM (spec §3.1); ``None`` = the tiny random LLaVA.
            debias: ASD/CSD/FT switches and τ1, τ2 (spec §3.4, §3.5).
            skew: bias measurement (spec §3.2).
            general_eval: optional general-ability file evaluated at test time (spec §4.5).
            lr: peak learning rate (spec §3.6: 5e-7 LLaVA-1.5, 1e-6 Qwen-VL, 1e-7 Bunny).
            weight_decay: AdamW weight decay (Reconstruction: 0).
            betas: AdamW betas.
            warmup_ratio: linear warm-up fraction of the total steps (Reconstruction: 0.03).
            scheduler: cosine decay after warm-up, or constant.
            concept_accuracy: at val/test also score every concept of an image's group to report concept accuracy.
        """
        super().__init__()
        check_choice("model.scheduler", scheduler, get_args(Scheduler))  # anything else would decay by cosine
        check_range("model.lr", lr, ge=0)
        check_range("model.weight_decay", weight_decay, ge=0)
        if len(betas) != 2:
            raise ValueError(f"model.betas={list(betas)}: expected AdamW's two betas")
        for beta in betas:  # the moments' decay rates
            check_range("model.betas", beta, ge=0, lt=1)
        check_range("model.warmup_ratio", warmup_ratio, ge=0, le=1)
        self.save_hyperparameters()
        self.mllm_config = mllm or MLLMConfig()
        self.debias = debias or DebiasConfig()
        self.skew_config = skew or SkewConfig()
        self.general_eval = general_eval or GeneralEvalConfig()
        self.mllm = MultimodalLLM(self.mllm_config)
        self.loss_fn = SocialFairnessLoss(
            self.debias.use_sfloss, self.debias.token_reduction, self.debias.normalize_weights
        )
        self.sample_skew: torch.Tensor | None = None  # (N_train,) per-sample Skew of the current epoch
        self._skew_epoch: int | None = None  # epoch at whose start ``sample_skew`` was estimated
        self._prepared_epoch: int | None = None  # epoch whose Skew refresh / resampling has run
        self._epoch_stats: dict[str, float] = {}  # logged in on_train_epoch_start
        self._schedule_total: int | None = None  # optimizer steps the LR schedule spans (resampled epochs only)
        self._counting_steps = False  # True while configure_optimizers sizes the schedule (see prepare_epoch)
        self._warned_schedule_end = False
        self._infos: dict[str, list[EvalSetInfo]] = {}
        self.skew_metrics = nn.ModuleDict()
        self.acc_metrics = nn.ModuleDict()
        self.loss_metrics = nn.ModuleDict()

    # ------------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        restore_output_capture(self)  # a model unpickled by ddp_spawn would return no hidden states
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "eval_sets"):
            raise ValueError("ASDModule needs a DebiasDataModule (its eval_sets describe the concepts and attributes)")
        if stage == "fit":  # a new fit estimates Skew afresh unless on_load_checkpoint (after setup) restores it
            self.sample_skew, self._skew_epoch, self._prepared_epoch = None, None, None
        if stage == "fit" and self.debias.use_resample:
            resampled = self.debias.epoch_length == "resampled"
            dm.train_sampler.fixed_length = not resampled
            if resampled:  # the epoch's length is the resampled list's: the loader is rebuilt each epoch
                reload_train_loader_every_epoch(self.trainer, "model.debias.epoch_length=resampled")
        for key in ["val"] if stage in ("fit", "validate") else ["test"] if stage == "test" else []:
            infos = dm.eval_sets(key)
            self._infos[key] = infos
            sc = self.skew_config
            self.skew_metrics[key] = nn.ModuleList(
                [
                    SkewMetric(
                        i.attribute_types,
                        [len(v) for v in i.attribute_values],
                        i.group_ids,
                        sc.mode,
                        sc.fairface_topk if (i.name == "fairface" and sc.fairface_topk is not None) else sc.topk,
                        sc.zero_count,
                        sc.alpha,
                        sc.clip,
                    )
                    for i in infos
                ]
            ).to(self.device)
            # per-sample values keyed by dataset index: a repeat that a DistributedSampler pads with counts once
            self.acc_metrics[key] = nn.ModuleList([IndexedMean() for _ in infos]).to(self.device)
            self.loss_metrics[key] = nn.ModuleList([IndexedMean() for _ in infos]).to(self.device)

    # ------------------------------------------------------------------------------------------------ scoring
    def score(
        self, images: torch.Tensor, concept: torch.Tensor, info: EvalSetInfo, which: Literal["own", "group"]
    ) -> torch.Tensor:
        """Relevance scores s(x_i, c) (spec §3.2) → (B, C) with NaN where not computed.

        Labelled images are scored against their own concept (``own``) or every concept of their group (``group``);
        unlabelled images (concept -1, FairFace) against every concept.
        """
        check_choice("which", which, ("own", "group"))  # anything else would score the whole group
        b, c_count = images.shape[0], len(info.concepts)
        out = torch.full((b, c_count), float("nan"), device=images.device)
        groups = info.group_ids
        row_concepts: list[tuple[int, ...]] = []
        for c in concept.tolist():
            if c < 0:
                row_concepts.append(tuple(range(c_count)))
            elif which == "own":
                row_concepts.append((c,))
            else:
                row_concepts.append(tuple(j for j in range(c_count) if groups[j] == groups[c]))
        by_width: dict[int, list[int]] = {}
        for i, cs in enumerate(row_concepts):
            by_width.setdefault(len(cs), []).append(i)
        chunk = self.skew_config.concept_chunk
        for width, rows in by_width.items():
            rows_t = torch.tensor(rows, device=images.device)
            for j0 in range(0, width, chunk):
                cols = [list(row_concepts[i][j0 : j0 + chunk]) for i in rows]  # (R, M) concept ids
                names = [[info.concepts[j] for j in row] for row in cols]
                if self.skew_config.scorer == "yes_prob":
                    s = self.mllm.yes_no_scores(images[rows_t], names)  # (R, M)
                else:
                    questions = [[info.questions[j] for j in row] for row in cols]
                    s = self.mllm.answer_logprob_scores(images[rows_t], questions, names)  # (R, M)
                col_t = torch.tensor(cols, device=images.device)  # (R, M)
                out[rows_t.unsqueeze(-1).expand_as(col_t), col_t] = s.float()
        return out

    def _call_unsharded(self, method_name: str, *args: Any) -> Any:
        """``getattr(self, method_name)(*args)`` with the model's full parameters available.

        Outside the training/validation steps (the per-epoch Skew refresh, the general-ability hook) a sharding
        strategy (``strategy: fsdp`` of the 7B configs, DeepSpeed ZeRO-3) holds only this rank's parameter shards,
        so calling the model directly fails. The call is then routed through the wrapper's forward, as Lightning
        does for ``training_step``; every rank must make the same calls (they do: each scores the whole probe set).
        Single-device and DDP models hold full parameters and are called directly.
        """
        trainer = self._trainer
        strategy = getattr(trainer, "strategy", None) if trainer is not None else None
        wrapper = getattr(strategy, "model", None)
        if wrapper is None or wrapper is self or isinstance(wrapper, DistributedDataParallel):
            return getattr(self, method_name)(*args)
        return strategy._forward_redirection(wrapper, self, method_name, *args)

    @torch.no_grad()
    def estimate_skew(self, loader, info: EvalSetInfo) -> torch.Tensor:
        """The Skew table (C, T, A) of the current model on ``loader``'s images (spec §3.3 refresh)."""
        was_training = self.training
        self.eval()
        which = "group" if self.skew_config.mode == "rate" else "own"
        scores, attributes, concepts = [], [], []
        context = self._trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()
        try:
            with context:
                for batch in loader:
                    if batch["image"].shape[0] == 0:
                        continue
                    images, concept = batch["image"].to(self.device), batch["concept"].to(self.device)
                    scores.append(self._call_unsharded("score", images, concept, info, which).cpu())
                    attributes.append(batch["attributes"])
                    concepts.append(batch["concept"])
        finally:
            self.train(was_training)
        if not scores:
            raise ValueError("Skew refresh: the probe set produced no images (all corrupt?)")
        sc = self.skew_config
        return skew_table(
            torch.cat(scores),
            torch.cat(attributes),
            torch.cat(concepts),
            [len(v) for v in info.attribute_values],
            info.group_ids,
            sc.mode,
            sc.topk,
            sc.zero_count,
            sc.alpha,
            sc.clip,
        )

    # ----------------------------------------------------------------------------------------------- training
    def prepare_epoch(self, epoch: int) -> None:
        """Refresh Skew with the current model, then resample the epoch's list (spec §3.3, §3.4); once per epoch.

        Called by the DataModule's ``train_dataloader`` (so that a rebuilt loader has the resampled epoch's length)
        and by ``on_train_epoch_start`` (a no-op when it already ran for ``epoch``).
        """
        if self._counting_steps:
            # ``trainer.estimated_stepping_batches`` builds the training loader inside configure_optimizers, before a
            # resumed fit has restored its loop counters (``current_epoch`` reads 0 there): preparing "epoch 0" then
            # would re-estimate the restored Skew table. The loader's length does not depend on this epoch's list
            # whenever that estimate is used (fixed-length epochs, or no resampling), so the preparation is left to
            # on_train_epoch_start, which runs before the epoch's batches are drawn.
            return
        if self._prepared_epoch == epoch or not (self.debias.use_resample or self.debias.use_sfloss):
            return
        self._prepared_epoch = epoch
        self._epoch_stats = {}
        dm = self.trainer.datamodule
        refresh_epoch = epoch % self.debias.refresh_every_n_epochs == 0 and self._skew_epoch != epoch
        if self.sample_skew is None or refresh_epoch:
            table = self.estimate_skew(dm.probe_dataloader(), dm.train_info)
            table = self.trainer.strategy.broadcast(table, src=0)  # identical lists on every rank
            ds = dm.train_set
            self.sample_skew = per_sample_skew(table, ds.concept_ids, ds.attribute_ids, self.skew_config.per_sample).to(
                self.device
            )
            self._skew_epoch = epoch
            max_skew, min_skew = max_min_skew(table)
            self._epoch_stats["train/max_skew"] = max_skew.nanmean().item()
            self._epoch_stats["train/min_skew"] = min_skew.nanmean().item()
        self.sample_skew = self.sample_skew.to(self.device)  # restored from a checkpoint on the CPU
        if self.debias.use_resample:
            generator = torch.Generator().manual_seed(self.debias.seed + 1000 * epoch)
            indices = bias_aware_resample(self.sample_skew, self.debias.tau1, self.debias.tau2, generator)
            dm.train_sampler.set_indices(indices)
            self._epoch_stats["train/resampled_length"] = float(indices.numel())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the per-sample Skew and the epoch that estimated it: with ``refresh_every_n_epochs > 1`` a resumed run
        goes on with the table of the last refresh (and a mid-epoch resume with the epoch's own table) instead of
        re-estimating it with the current model; the epoch's resampled list follows from it and (seed, epoch)."""
        skew = self.sample_skew
        checkpoint["asdmllm_skew"] = {
            "sample_skew": None if skew is None else skew.detach().cpu(),
            "epoch": self._skew_epoch,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("asdmllm_skew")  # absent in checkpoints written before it was saved: re-estimated
        if state is not None:
            self.sample_skew, self._skew_epoch = state["sample_skew"], state["epoch"]
            self._prepared_epoch = None  # the restored epoch's list is rebuilt from the restored Skew

    def on_train_epoch_start(self) -> None:
        """Skew refresh + resampling (if the DataModule has not triggered it yet), and their logs."""
        self.prepare_epoch(self.current_epoch)
        for key, value in self._epoch_stats.items():
            self.log(key, value, on_epoch=True, on_step=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        bsz = batch["image"].shape[0]
        if bsz == 0:
            if self.trainer.world_size > 1:  # the other ranks would wait forever in the gradient all-reduce
                raise RuntimeError(
                    f"training batch {batch_idx} of rank {self.global_rank} is empty: every image was skipped as "
                    "corrupt (data.on_corrupt: skip). A rank cannot skip a step under DDP/FSDP; remove the corrupt "
                    "images (their locations are logged above) or use data.on_corrupt: raise to find them"
                )
            rank_zero_warn("training batch is empty (all images skipped as corrupt); skipping the step")
            return None
        total = self._schedule_total
        if total is not None and self.global_step >= total and not self._warned_schedule_end:
            self._warned_schedule_end = True
            rank_zero_warn(
                f"optimizer step {self.global_step} is past the LR schedule's {total} steps, which count nominal epochs "
                "(spec §3.4) while the resampled epochs are longer: the remaining steps of this run use the schedule's "
                "final LR, 0. Use model.debias.epoch_length: nominal (fixed epoch length) or model.scheduler: constant "
                "if that is not wanted"
            )
        inputs = self.mllm.build_inputs(batch["instruction"], batch["answer"])
        logits = self.mllm(batch["image"], inputs["input_ids"], inputs["attention_mask"])  # (B, L, V)
        if self.sample_skew is not None and self.debias.use_sfloss:
            skew = self.sample_skew[batch["index"]]  # (B,) Skew(P_i) of this epoch
        else:
            skew = logits.new_zeros(bsz)
        out = self.loss_fn(logits, inputs["labels"], skew)
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(
                f"training loss is {out['loss'].item()} at step {self.global_step}; lower model.lr"
            )
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bsz)
        self.log("train/loss_ar", out["loss_ar"], batch_size=bsz)
        self.log("train/mean_weight", out["mean_weight"], batch_size=bsz)
        return out["loss"]

    # --------------------------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict[str, Any], stage: str, idx: int) -> None:
        if batch["image"].shape[0] == 0:
            return
        info = self._infos[stage][idx]
        which = "group" if (self.skew_config.mode == "rate" or self.hparams.concept_accuracy) else "own"
        scores = self.score(batch["image"], batch["concept"], info, which)  # (B, C)
        self.skew_metrics[stage][idx].update(scores, batch["attributes"], batch["concept"], batch["index"])
        labelled = batch["concept"] >= 0
        if not bool(labelled.any()):
            return
        ids = batch["index"][labelled]
        if which == "group":
            pred = torch.nan_to_num(scores[labelled], nan=-math.inf).argmax(-1)  # (B_l,) argmax over the group
            self.acc_metrics[stage][idx].update((pred == batch["concept"][labelled]).float(), ids)
        keep = labelled.nonzero().squeeze(-1).tolist()
        inputs = self.mllm.build_inputs([batch["instruction"][i] for i in keep], [batch["answer"][i] for i in keep])
        logits = self.mllm(batch["image"][labelled], inputs["input_ids"], inputs["attention_mask"])
        per_sample = autoregressive_loss(logits, inputs["labels"], self.debias.token_reduction)  # (B_l,) answer loss
        self.loss_metrics[stage][idx].update(per_sample, ids)

    def _eval_epoch_end(self, stage: str) -> None:
        """Compute and log the epoch's evaluation metrics. Every rank makes the same collectives in the same order:
        whether a metric is reported depends on the updates of all ranks together (one all-reduce of the counts), so
        a rank that scored nothing (its whole shard corrupt and skipped) takes part and contributes nothing."""
        infos = self._infos.get(stage, [])
        metrics = [
            (self.skew_metrics[stage][i], self.acc_metrics[stage][i], self.loss_metrics[stage][i])
            for i in range(len(infos))
        ]
        counts = torch.tensor([[m.update_count for m in row] for row in metrics], dtype=torch.long).view(-1, 3)
        if is_distributed():  # (sets, 3) updates over all ranks, reduced on the module's device (NCCL: no CPU)
            counts = counts.to(self.device)
            dist.all_reduce(counts)
            counts = counts.cpu()
        for idx, info in enumerate(infos):
            skew_metric, acc_metric, loss_metric = metrics[idx]
            if counts[idx, 0] == 0:
                continue
            with warnings.catch_warnings():  # a rank without updates still syncs; its "compute before update" is fine
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                skew = skew_metric.compute()  # computed on the CPU (skew_table ranks there)
                values = {
                    name: m.compute().float().to(self.device)
                    for name, m, n in (
                        ("concept_acc", acc_metric, counts[idx, 1]),
                        ("loss", loss_metric, counts[idx, 2]),
                    )
                    if n > 0
                }
            for key, value in skew.items():
                self.log(f"{stage}/bias/{info.name}/{key}", value.to(self.device), sync_dist=True)
            skew_metric.reset()
            for name, value in values.items():  # already equal on every rank: the sync averages equal values
                key = f"{stage}/{name}" if idx == 0 else f"{stage}/{name}/{info.name}"
                self.log(key, value, sync_dist=True)
                if idx == 0 and name == "concept_acc":
                    self.log(f"{stage}/{name}/{info.name}", value, sync_dist=True)
            acc_metric.reset()
            loss_metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        if self.general_eval.file:
            for key, value in self.evaluate_general().items():
                self.log(f"test/general/{key}", value, sync_dist=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any] | None:
        """Greedy answers to the batch's instructions (spec §3.7): ``index`` (B,) dataset indices, ``answer`` (the
        generated texts), ``instruction`` and ``reference`` (the dataset's answer: the concept or the caption).
        None for a batch whose images were all skipped as corrupt."""
        if batch["image"].shape[0] == 0:
            return None
        return {
            "index": batch["index"],
            "answer": self.mllm.generate_answers(batch["image"], batch["instruction"]),
            "instruction": list(batch["instruction"]),
            "reference": list(batch["answer"]),
        }

    def prediction_rows(self, prediction: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per image of the predict split (the test split of ``data.dataset``): ``index`` (its index in that
        split), what the dataset's ``describe`` gives (``source_row``: its row in the parquet shards; ``image``: the
        image file name stored there, null when only bytes are; ``counterfactual_set``; ``concept``; ``attributes``,
        type → value), ``instruction`` (the prompt's question), ``reference`` (the dataset's answer: the concept, or
        the caption in ``caption`` mode) and ``answer`` (the greedy generation)."""
        describe = getattr(predict_dataset(self), "describe", None)
        rows = []
        for i, instruction, reference, answer in zip(
            prediction["index"].tolist(),
            prediction.get("instruction", [None] * len(prediction["answer"])),
            prediction.get("reference", [None] * len(prediction["answer"])),
            prediction["answer"],
            strict=True,
        ):
            row = {"index": i, **(describe(i) if describe is not None else {})}
            row.update(instruction=instruction, reference=reference, answer=answer)
            rows.append(row)
        return rows

    def _generate_answers(self, images: torch.Tensor, instructions: list[str], max_new_tokens: int) -> list[str]:
        return self.mllm.generate_answers(images, instructions, max_new_tokens)

    def _general_answers(self, records: list[dict], root: Path, max_new_tokens: int) -> list[str]:
        """Greedy answers to the general-ability records (one image each, checked by :meth:`evaluate_general`), in
        order."""
        answers = []
        for rec in records:
            image = load_image(root / rec["image"], self.mllm.image_size).unsqueeze(0).to(self.device)
            question = rec["question"]
            if "options" in rec:
                question += " " + " ".join(f"{k}. {v}" for k, v in sorted(rec["options"].items()))
                question += " Answer with the option's letter from the given choices directly."
            answers.append(self._call_unsharded("_generate_answers", image, [question], max_new_tokens)[0])
        return answers

    @torch.no_grad()
    def evaluate_general(self) -> dict[str, float]:
        """General-ability hook (spec §4.5): greedy answers on a small VQA / multiple-choice JSONL file."""
        cfg = self.general_eval
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.general_eval.file={cfg.file!r} does not exist; see README, General ability")
        root = Path(cfg.image_root).expanduser() if cfg.image_root else path.parent
        rows = read_jsonl(path, "model.general_eval.file")
        rows = rows[: cfg.max_questions] if cfg.max_questions else rows
        for lineno, rec in rows:  # every record is checked before the first answer is generated
            if not isinstance(rec, dict) or "image" not in rec or "question" not in rec:
                raise KeyError(f"{path}: line {lineno} needs a JSON object with 'image' and 'question'")
            if "answers" not in rec and "answer" not in rec:
                raise KeyError(f"{path}: line {lineno} needs 'answers' (VQA) or 'options' + 'answer' (multiple choice)")
            _check_general_record(path, lineno, rec, root)
        records = [rec for _, rec in rows]
        vqa = VQAAccuracy()
        mc_preds, mc_answers = [], []
        context = self._trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()
        with context:  # an epoch-end hook runs outside the step's autocast (bf16 base + fp32 trained parts)
            answers = self._general_answers(records, root, cfg.max_new_tokens)
        for rec, answer in zip(records, answers, strict=True):
            if "answers" in rec:
                vqa.update([answer], [rec["answers"]])
            else:
                mc_preds.append(answer)
                mc_answers.append(rec["answer"])
        out = {}
        if vqa.update_count:
            out["vqa_acc"] = float(vqa.compute()) * 100
        if mc_answers:
            out["mc_acc"] = multiple_choice_accuracy(mc_preds, mc_answers) * 100
        return out

    # ---------------------------------------------------------------------------------------------- optimizer
    def _nominal_total_steps(self) -> int:
        """Optimizer steps of the run counted in nominal epochs of ``len(train set)/batch`` (spec §3.4); the resampled
        epochs' lengths vary and are not known in advance."""
        t = self.trainer
        if not (self.debias.use_resample and self.debias.epoch_length == "resampled"):
            return max(1, int(t.estimated_stepping_batches))
        dm = t.datamodule
        per_epoch = len(dm.train_set) // (dm.hparams.batch_size * max(1, t.world_size))  # drop_last
        limit = t.limit_train_batches
        per_epoch = min(per_epoch, int(limit)) if isinstance(limit, int) else int(per_epoch * float(limit))
        per_epoch_steps = math.ceil(max(1, per_epoch) / t.accumulate_grad_batches)
        if t.max_epochs in (None, -1) and t.max_steps not in (None, -1):
            # no epoch bound (``max_epochs: -1``): ``max_steps`` alone ends the fit, as in estimated_stepping_batches
            return max(1, t.max_steps)
        steps = per_epoch_steps * max(1, t.max_epochs or 1)
        return max(1, min(steps, t.max_steps) if t.max_steps not in (None, -1) else steps)

    def configure_optimizers(self):
        """AdamW over the trainable parts (vision tower frozen by default), linear warm-up then cosine decay
        (LLaVA convention, spec §3.6)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: check model.mllm.trainable / model.mllm.lora")
        hp = self.hparams
        optimizer = torch.optim.AdamW(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        self._counting_steps = True
        try:
            total = self._nominal_total_steps()
        finally:
            self._counting_steps = False
        warmup = int(hp.warmup_ratio * total)
        resampled = self.debias.use_resample and self.debias.epoch_length == "resampled"
        # a resampled run's length is unknown in advance: warn if it outlives the cosine schedule (LR 0 from then on)
        self._schedule_total = total if resampled and hp.scheduler == "cosine" else None

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if hp.scheduler == "constant":
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)  # constant after ``total`` (cosine end)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(ASDModule)
