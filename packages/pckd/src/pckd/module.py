"""The PCKD LightningModule: student (+ frozen teacher + auxiliary heads), the loss of spec §3.6, metrics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_choice, check_range
from mmzoo.data import read_torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from pckd.losses import (
    CategoryContrastiveLoss,
    CenterAlignmentLoss,
    CRDLoss,
    FeatureAlignmentLoss,
    PerSampleKDLoss,
    PreviewWeights,
)
from pckd.models import AlignHead, Embed, PCKDConfig, build_backbone

__all__ = ["PCKDModule", "load_teacher_state_dict", "TORCHVISION_WEIGHTS"]

Method = Literal["ce", "kd", "crd", "pckd"]
"""Training objectives of :class:`PCKDModule` (``model.method``)."""
Optimizer = Literal["sgd", "adam"]
"""Optimizers of :class:`PCKDModule` (``model.optimizer``)."""

# torchvision ImageNet weight files, looked up in the local torch hub cache only (spec §4.3)
TORCHVISION_WEIGHTS = {"tv_resnet34": "resnet34-b627a593.pth", "tv_resnet18": "resnet18-f37072fd.pth"}


def load_teacher_state_dict(path: str, arch: str) -> dict[str, torch.Tensor]:
    """Read a teacher's weights: a RepDistiller dict (``{"model": state_dict, ...}``), a bare state_dict,
    a pckd/Lightning checkpoint of a trained student (``{"state_dict": {"student.*": ...}}``), or for
    ``tv_resnet*`` the value ``IMAGENET1K_V1`` (torchvision's file in the local torch hub cache)."""
    if arch in TORCHVISION_WEIGHTS and path == "IMAGENET1K_V1":
        file = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS[arch]
        if not file.is_file():
            raise FileNotFoundError(
                f"model.teacher_checkpoint=IMAGENET1K_V1: torchvision weight file {TORCHVISION_WEIGHTS[arch]!r} is "
                f"not in the local cache {file.parent}; download it there (no download at run time)"
            )
        path = str(file)
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"model.teacher_checkpoint={path!r} does not exist; supply a RepDistiller teacher "
            f"(<arch>_vanilla/ckpt_epoch_240.pth) or train one with `pckd fit --config teacher_cifar100_<arch>`; "
            f"see README, Teachers"
        )
    # RepDistiller checkpoints pickle an argparse Namespace ("opt"), so weights_only loading cannot read them;
    # the file is user-supplied.
    ckpt = read_torch(path, "model.teacher_checkpoint", weights_only=False)
    if isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        state = ckpt["model"]
    elif isinstance(ckpt, dict) and "state_dict" in ckpt:
        state = {k[len("student.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
        if not state:
            raise KeyError(f"{path}: Lightning checkpoint without 'student.*' weights; not a pckd checkpoint")
    elif isinstance(ckpt, dict):
        state = ckpt
    else:
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


class PCKDModule(pl.LightningModule):
    """Student training with PCKD (spec §3), vanilla KD, CRD, or plain cross-entropy (also: teacher training).

    ``method``: ``pckd`` = the full objective of spec §3.6; ``kd`` = RepDistiller's w_ce·L_CE + w_kd·L_KD on
    the un-rotated view; ``crd`` = RepDistiller's w_ce·L_CE + w_kd·L_KD + w_crd·L_CRD on the un-rotated view
    (spec §3.10: CRD with w_kd = 0, "CRD+KD" with w_kd = 1); ``ce`` = w_ce·L_CE only (student baseline, and teacher
    training with no teacher). Ablations are weights: ``pckd_wo_kd`` w_kd = 0, ``pckd_wo_cc`` w_cc = 0,
    ``pckd_wo_preview`` preview false.
    """

    checkpoint_monitor = "val/acc1"
    checkpoint_mode = "max"

    def __init__(
        self,
        config: PCKDConfig,
        method: Method = "pckd",
        teacher_checkpoint: str | None = None,
        teacher_random_init: bool = False,
        w_ce: float = 1.0,
        w_kd: float = 1.0,
        w_cc: float = 0.05,
        w_ca: float = 1.0,
        w_fa: float = 20.0,
        kd_temperature: float = 4.0,
        cc_temperature: float = 4.0,
        cc_base_temperature: float = 0.07,
        preview: bool = True,
        preview_lambda: float = 1.005,
        detach_preview_weights: bool = True,
        w_crd: float = 0.8,
        crd_feat_dim: int = 128,
        crd_num_negatives: int = 16384,
        crd_temperature: float = 0.07,
        crd_momentum: float = 0.5,
        optimizer: Optimizer = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: tuple[int, ...] = (150, 180, 210),
        lr_gamma: float = 0.1,
        top5: bool = False,
    ) -> None:
        """
        Args:
            config: networks and heads (spec §3.2–3.3).
            method: ``pckd`` | ``kd`` | ``crd`` | ``ce`` (see class docstring).
            teacher_checkpoint: teacher weights (RepDistiller ``{"model": ...}``, bare state_dict, a pckd
                checkpoint, or ``IMAGENET1K_V1`` for tv_resnet34); required for kd/crd/pckd unless teacher_random_init.
            teacher_random_init: tests/demos only: keep the teacher randomly initialised.
            w_ce: r, weight of L_CE (spec §3.6; the release's pckd branch uses 1).
            w_kd: δ, weight of the preview-weighted per-sample KD (spec §3.6: not published; 1.0 reconstruction).
            w_cc: β, weight of the category-center contrast L_CC (release: 0.05).
            w_ca: a, weight of the category-center alignment L_CA (release: 1).
            w_fa: f, weight of the feature alignment L_FA (release: 20).
            kd_temperature: T of the logit KD (release: 4).
            cc_temperature: τ of L_CC (release: 4).
            cc_base_temperature: τ_b of L_CC (release default 0.07; scales L_CC by τ/τ_b).
            preview: use the preview weights v_i (false: v ≡ 1, the "w/o preview" ablation).
            preview_lambda: λ of the threshold τ_e = λ^e (release: 1.005).
            detach_preview_weights: detach v_i from the graph (true, the paper's reading); false reproduces the
                release, where the KD weights carry gradient into the CE terms.
            w_crd: β of the CRD baseline (method ``crd``; RepDistiller -b 0.8, spec §3.10).
            crd_feat_dim: CRD embedding width of both Embed heads, Linear(d → D) + L2 norm (128).
            crd_num_negatives: CRD negatives per sample, from other classes (16,384); drawn with replacement when
                an anchor's pool of other-class training images is smaller.
            crd_temperature: CRD's NCE temperature τ (0.07).
            crd_momentum: CRD memory momentum μ, M[i] ← normalise(μ·M[i] + (1 − μ)·v_i) (0.5).
            optimizer: ``sgd`` (RepDistiller recipe) or ``adam`` (digits repro).
            lr: learning rate (spec §3.9: 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 students).
            momentum: SGD momentum (0.9).
            weight_decay: weight decay on every trainable parameter (5e-4).
            lr_milestones: epochs (counted from 0) after which the lr is multiplied by lr_gamma (150, 180, 210).
            lr_gamma: step-decay factor (0.1).
            top5: also log top-5 accuracy (ImageNet).
        """
        super().__init__()
        # an unknown method would train CE beside an unused teacher, an unknown optimizer would be Adam
        check_choice("model.method", method, get_args(Method))
        check_choice("model.optimizer", optimizer, get_args(Optimizer))
        # loss weights: 0 switches a term off (the ablations); a negative weight would ascend that term
        for key, value in (
            ("w_ce", w_ce),
            ("w_kd", w_kd),
            ("w_cc", w_cc),
            ("w_ca", w_ca),
            ("w_fa", w_fa),
            ("w_crd", w_crd),
        ):
            check_range(f"model.{key}", value, ge=0, lt=math.inf)
        # L_CC divides its logits by τ and scales the loss by τ/τ_b
        check_range("model.cc_temperature", cc_temperature, gt=0)
        check_range("model.cc_base_temperature", cc_base_temperature, gt=0)
        check_range("model.momentum", momentum, ge=0, le=1)
        check_range("model.weight_decay", weight_decay, ge=0)
        check_range("model.lr_gamma", lr_gamma, ge=0)  # a negative factor would turn the lr negative
        for i, epoch in enumerate(lr_milestones):
            check_range(f"model.lr_milestones[{i}]", epoch, ge=0, integer=True)  # epochs count from 0
        self.save_hyperparameters()
        self.config = config
        if method != "ce" and config.teacher_arch is None:
            raise ValueError(f"model.method={method!r} needs model.config.teacher_arch (null is only for 'ce')")
        for key, value in (
            ("kd_temperature", kd_temperature),
            ("lr", lr),
            ("preview_lambda", preview_lambda),
            ("crd_temperature", crd_temperature),
        ):
            check_range(f"model.{key}", value, gt=0)
        check_range("model.crd_feat_dim", crd_feat_dim, ge=1, integer=True)
        check_range("model.crd_num_negatives", crd_num_negatives, ge=1, integer=True)
        self.student = build_backbone(config.student_arch, config.num_classes, config.in_channels)
        self.teacher: nn.Module | None = None
        if method != "ce":
            self.teacher = build_backbone(config.teacher_arch, config.num_classes, config.in_channels)
            if teacher_checkpoint:
                state = load_teacher_state_dict(teacher_checkpoint, config.teacher_arch)
                try:
                    missing, unexpected = self.teacher.load_state_dict(state, strict=False)
                except RuntimeError as err:  # shape mismatch (e.g. another width or num_classes)
                    raise KeyError(
                        f"model.teacher_checkpoint={teacher_checkpoint!r} does not match "
                        f"model.config.teacher_arch={config.teacher_arch!r} / num_classes={config.num_classes}: {err}"
                    ) from err
                if missing or unexpected:
                    raise KeyError(
                        f"model.teacher_checkpoint={teacher_checkpoint!r} does not match "
                        f"model.config.teacher_arch={config.teacher_arch!r}: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}"
                    )
            elif not teacher_random_init:
                raise ValueError(
                    "model.teacher_checkpoint is not set: supply the teacher's weights (see README, Teachers); "
                    "model.teacher_random_init=true exists only for tests"
                )
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.teacher.eval()
        d_s = self.student.feature_dim
        self.embed_s = self.embed_t = self.align = None
        if method == "pckd":
            d_t = self.teacher.feature_dim
            self.embed_s = Embed(d_s, d_s)  # E_s
            self.embed_t = Embed(d_s, d_t)  # E_t: student feature → teacher center space
            self.align = AlignHead(d_s, config.align_hidden_mult * d_t, d_t)  # H
            # A head whose loss weight is 0 never receives a gradient. Freeze it: DDP (Lightning's default
            # find_unused_parameters=False) otherwise waits for its gradients and stops at the next step.
            # The heads are still built so that the random initialisation of everything after them is unchanged.
            for head, weight in ((self.embed_s, w_cc), (self.embed_t, w_cc), (self.align, w_fa)):
                if weight == 0:
                    head.requires_grad_(False)
        self.crd_embed_s = self.crd_embed_t = self.crd_loss = None
        if method == "crd":
            if not 0.0 <= crd_momentum <= 1.0:
                raise ValueError(f"model.crd_momentum={crd_momentum} must be in [0, 1]")
            self.crd_embed_s = Embed(d_s, crd_feat_dim)  # CRD Embed on the student's penultimate feature
            self.crd_embed_t = Embed(self.teacher.feature_dim, crd_feat_dim)  # on the teacher's (trainable head)
            self.crd_loss = CRDLoss(crd_feat_dim, crd_num_negatives, crd_temperature, crd_momentum)
            if w_crd == 0:  # frozen and out of the optimizer, as PCKD's heads at weight 0 (DDP)
                self.crd_embed_s.requires_grad_(False)
                self.crd_embed_t.requires_grad_(False)
        self.kd_loss = PerSampleKDLoss(kd_temperature)
        self.cc_loss = CategoryContrastiveLoss(cc_temperature, cc_base_temperature)
        self.ca_loss = CenterAlignmentLoss()
        self.fa_loss = FeatureAlignmentLoss()
        self.preview_weights = PreviewWeights(preview_lambda, detach_preview_weights)
        k = config.num_classes
        self.train_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes=k, top_k=5, average="micro") if top5 else None
        self.test_acc5 = MulticlassAccuracy(num_classes=k, top_k=5, average="micro") if top5 else None
        # best / last validation top-1 seen during fit (saved in checkpoints; spec §2 acc1_best / acc1_last)
        self.register_buffer("best_val_acc1", torch.tensor(-1.0))
        self.register_buffer("last_val_acc1", torch.tensor(-1.0))

    # ----------------------------------------------------------------- teacher stays frozen in eval mode
    def train(self, mode: bool = True) -> PCKDModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BatchNorm uses running statistics (spec §2)
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Inference (spec §3.7): student only, (B, C, H, W) → logits (B, K)."""
        return self.student(image)

    # ----------------------------------------------------------------- the objective of spec §3.6
    def _check_batch(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if image.dim() == 4:
            image = image[:, None]  # (B, 1, C, H, W): a single view
        if image.dim() != 5 or image.shape[2] != self.config.in_channels:
            raise ValueError(
                f"batch['image'] must be (B, V, {self.config.in_channels}, H, W) or (B, C, H, W), "
                f"got {tuple(image.shape)}"
            )
        if image.shape[0] == 0:
            raise ValueError("empty batch: batch['image'] has 0 images")
        if label.shape != (image.shape[0],):
            raise ValueError(f"batch['label'] must be ({image.shape[0]},), got {tuple(label.shape)}")
        return image

    def compute_losses(
        self, image: torch.Tensor, label: torch.Tensor, epoch: int, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Every term of spec §3.6 for one batch.

        image (B, V, C, H, W) with view 0 un-rotated (or (B, C, H, W)); label (B,); epoch e ≥ 1 (preview);
        index (B,) the images' positions in the training split (method ``crd`` only: its memory rows).
        Returns ``loss`` and the terms ``ce, kd, cc, ca, fa`` (and ``crd`` for method crd) plus ``preview_mean``,
        ``preview_hard_frac``, ``logits`` (B, K) of the un-rotated views.
            L = r·L_CE + δ·Σ_i v_i·KL_i + (β/(V·B))·Σ_j v_i(j)·L_CC,j + a·L_CA + f·L_FA      (pckd)
            L = γ·L_CE + α·L_KD + β·L_CRD                                                    (crd; spec §3.10)
        """
        h = self.hparams
        image = self._check_batch(image, label)
        b, v = image.shape[:2]
        zero = image.new_zeros(())
        if h.method != "pckd":
            image, v = image[:, :1], 1  # CE and KD train on the un-rotated view only
        flat = image.flatten(0, 1)  # (B·V, C, H, W), image-major: the V views of image i are consecutive
        f_s = self.student.forward_features(flat)  # (B·V, d_s)
        student_fc = self.student.classifier_layer
        logits = student_fc(f_s)  # (B·V, K)
        logits0 = logits.view(b, v, -1)[:, 0]  # (B, K) un-rotated views
        ce_i = F.cross_entropy(logits0.float(), label, reduction="none")  # (B,)
        out = {"ce": ce_i.mean(), "kd": zero, "cc": zero, "ca": zero, "fa": zero}
        weights = torch.ones_like(ce_i)
        if h.method != "ce":
            with torch.no_grad():
                f_t = self.teacher.forward_features(flat)  # (B·V, d_t)
                teacher_logits0 = self.teacher.classifier_layer(f_t).view(b, v, -1)[:, 0]  # (B, K)
        if h.method == "kd":
            out["kd"] = self.kd_loss(logits0, teacher_logits0).sum()
        elif h.method == "crd":
            if h.w_kd != 0:
                out["kd"] = self.kd_loss(logits0, teacher_logits0).sum()  # RepDistiller DistillKL(T)
            out["crd"] = zero
            if h.w_crd != 0:
                self._check_crd_index(index, label)
                v_s = self.crd_embed_s(f_s)  # (B, D) unit student embeddings
                v_t = self.crd_embed_t(f_t)  # (B, D) unit teacher embeddings (frozen f_T, trainable head)
                out["crd"] = self.crd_loss(v_s, v_t, index)  # NCE, both anchors; updates the memory banks
        elif h.method == "pckd":
            if h.preview:
                weights = self.preview_weights(ce_i, epoch)  # (B,) v_i
            if h.w_kd != 0:
                out["kd"] = (weights * self.kd_loss(logits0, teacher_logits0)).sum()  # Σ_i v_i KL_i
            if h.w_cc != 0:
                teacher_fc = self.teacher.classifier_layer
                u = self.embed_s(f_s) @ student_fc.weight.T  # (B·V, K) u_j = W_S E_s(f_j)
                w = self.embed_t(f_s) @ teacher_fc.weight.T  # (B·V, K) w_j = W_T E_t(f_j), W_T frozen
                cc_j = self.cc_loss(u, w, label.repeat_interleave(v))  # (B·V,) L_CC,j
                view_weights = weights.detach().repeat_interleave(v)  # (B·V,) v_i(j), detached as in the release
                out["cc"] = (view_weights * cc_j).sum() / (b * v)  # divides by V·B, not Σ v
            if h.w_ca != 0:
                out["ca"] = self.ca_loss(student_fc, self.teacher.classifier_layer)
            if h.w_fa != 0:
                if self.align.training and f_s.shape[0] == 1:
                    # H's BatchNorm1d cannot form batch statistics from one row (torch's error names no setting)
                    which = "" if index is None else f" (image index {int(index.reshape(-1)[0])} of the split)"
                    raise ValueError(
                        f"model.method=pckd: a training batch holds a single image with one view{which}, and "
                        "L_FA's head H normalises with BatchNorm1d over the batch, which needs at least 2 rows; "
                        "use data.num_views=4 (the rotated views), data.drop_last=true, or a data.batch_size that "
                        "does not leave one image in the epoch's last batch"
                    )
                out["fa"] = self.fa_loss(self.align(f_s), f_t)
        if h.method == "crd":
            out["loss"] = h.w_ce * out["ce"] + h.w_kd * out["kd"] + h.w_crd * out["crd"]
        else:
            out["loss"] = (
                h.w_ce * out["ce"] + h.w_kd * out["kd"] + h.w_cc * out["cc"] + h.w_ca * out["ca"] + h.w_fa * out["fa"]
            )
        out["preview_mean"] = weights.detach().mean()
        out["preview_hard_frac"] = (weights.detach() < 1).float().mean()
        out["logits"] = logits0.detach()
        return out

    def _check_crd_index(self, index: torch.Tensor | None, label: torch.Tensor) -> None:
        """CRD's memory rows are the images' positions in the training split, whose labels the module holds."""
        if index is None:
            raise ValueError("model.method=crd needs batch['index'] (the images' positions in the training split)")
        n = self.crd_loss.num_data
        if n == 0:
            raise RuntimeError(
                "model.method=crd: the memory banks are empty; fit with PCKDDataModule (its training labels size "
                "them in setup) or call init_crd_memory(train_labels)"
            )
        if index.shape != label.shape or bool((index < 0).any()) or bool((index >= n).any()):
            raise ValueError(f"batch['index'] {tuple(index.shape)} must hold positions in 0..{n - 1} of the training "
                             f"split, one per label")  # fmt: skip
        if not torch.equal(self.crd_loss.train_labels[index], label):
            raise ValueError("batch['label'] differs from the training split's labels at batch['index']: CRD's memory "
                             "needs the split it was sized from")  # fmt: skip

    def init_crd_memory(self, train_labels: torch.Tensor) -> None:
        """Size CRD's memory banks for the training split, whose labels (N,) choose each anchor's negatives."""
        if self.crd_loss is None:
            raise ValueError(f"init_crd_memory: model.method={self.hparams.method!r} has no CRD memory")
        self.crd_loss.init_memory(train_labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.compute_losses(
            batch["image"], batch["label"], epoch=self.current_epoch + 1, index=batch.get("index")
        )
        terms = ("ce", "kd", "crd") if self.hparams.method == "crd" else ("ce", "kd", "cc", "ca", "fa")
        if not torch.isfinite(out["loss"]):
            values = {k: float(out[k]) for k in terms}
            raise FloatingPointError(f"non-finite PCKD loss at epoch {self.current_epoch}, step {batch_idx}: {values}")
        bs = batch["label"].shape[0]
        self.train_acc1(out["logits"], batch["label"])
        for key in ("loss", *terms, "preview_mean", "preview_hard_frac"):
            self.log(f"train/{key}", out[key], batch_size=bs, prog_bar=key == "loss")
        self.log("train/acc1", self.train_acc1, batch_size=bs, on_step=False, on_epoch=True)
        return out["loss"]

    # ----------------------------------------------------------------- evaluation: student only, un-rotated
    def _eval_step(self, batch: dict[str, torch.Tensor], acc1: MulticlassAccuracy, acc5) -> None:
        image, label = batch["image"], batch["label"]
        if image.dim() == 5:
            image = image[:, 0]  # (B, C, H, W) the un-rotated view
        logits = self.student(image)
        acc1.update(logits, label)
        if acc5 is not None:
            acc5.update(logits, label)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc1, self.val_acc5)

    def on_validation_epoch_end(self) -> None:
        acc1 = self.val_acc1.compute() * 100  # top-1 (%)
        self.val_acc1.reset()
        self.log("val/acc1", acc1, sync_dist=True)
        if self.val_acc5 is not None:
            self.log("val/acc5", self.val_acc5.compute() * 100, sync_dist=True)
            self.val_acc5.reset()
        if not self.trainer.sanity_checking:
            self.last_val_acc1.fill_(float(acc1))
            self.best_val_acc1.fill_(max(float(self.best_val_acc1), float(acc1)))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc1, self.test_acc5)

    def on_test_epoch_end(self) -> None:
        """``test/acc1`` (= ``test/acc1_last`` when the evaluated checkpoint is last.ckpt) and ``test/acc1_best``,
        the best per-epoch validation top-1 of the fit (the test split under the RepDistiller CIFAR protocol);
        both equal test/acc1 when no validation ran."""
        acc1 = self.test_acc1.compute() * 100
        self.test_acc1.reset()
        self.log("test/acc1", acc1, sync_dist=True)
        self.log("test/acc1_last", acc1, sync_dist=True)
        best = self.best_val_acc1 if self.best_val_acc1 >= 0 else acc1
        self.log("test/acc1_best", best, sync_dist=True)
        if self.test_acc5 is not None:
            self.log("test/acc5", self.test_acc5.compute() * 100, sync_dist=True)
            self.test_acc5.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Student predictions of the un-rotated images: ``pred`` (B,), ``prob`` (B, K) softmax, ``label`` (B,), and
        the batch's identities ``index`` (B,) plus ``path`` (ImageNet) or ``digits_index`` (digits) when present."""
        image = batch["image"][:, 0] if batch["image"].dim() == 5 else batch["image"]
        logits = self.student(image)
        out = {"pred": logits.argmax(dim=1), "prob": logits.softmax(dim=1), "label": batch["label"]}
        for key in ("index", "path", "digits_index"):
            if key in batch:
                out[key] = batch[key]
        return out

    def prediction_rows(self, prediction: dict) -> list[dict]:
        """One row per image of a predicted batch (what ``pckd predict`` writes, one JSON line each):

        - ``index``: the image's position in the predicted split (CIFAR-100: the row of the test pickle or parquet
          table; ImageNet: the position in ImageFolder's sorted file order; digits: the position in the split);
        - ``path`` (ImageNet only): the image file relative to ``data.data_root``, e.g. ``val/<wnid>/<name>.JPEG``;
        - ``digits_index`` (digits only): the row of ``sklearn.datasets.load_digits()``;
        - ``pred``: the predicted class index (argmax of the student's logits) and ``pred_name`` its name;
        - ``top5``: the five most probable classes (fewer when there are fewer classes), most probable first, each
          ``{"class": index, "name": name, "prob": softmax probability}``;
        - ``label``: the split's label of the image and ``label_name`` its name.

        Names (``pred_name``, ``label_name``, ``name``) come from the data (CIFAR-100 fine label names, ImageNet
        wnids) and are left out where it has none (digits, or predict without a datamodule).
        """
        dm = self.trainer.datamodule if self._trainer is not None else None
        names = dm.class_names("predict") if hasattr(dm, "class_names") else None
        prob = prediction["prob"].detach().float().cpu()  # (B, K)
        top_p, top_c = prob.topk(min(5, prob.shape[1]), dim=1)  # (B, 5)
        preds, labels = prediction["pred"].tolist(), prediction["label"].tolist()
        ids = {key: prediction[key] for key in ("index", "path", "digits_index") if key in prediction}
        ids = {key: list(v) if isinstance(v, (list, tuple)) else v.tolist() for key, v in ids.items()}
        rows = []
        for i in range(len(preds)):
            row = {key: v[i] for key, v in ids.items()}
            row["pred"] = preds[i]
            if names:
                row["pred_name"] = names[preds[i]]
            row["top5"] = [
                {"class": c, **({"name": names[c]} if names else {}), "prob": p}
                for c, p in zip(top_c[i].tolist(), top_p[i].tolist())
            ]
            row["label"] = labels[i]
            if names:
                row["label_name"] = names[labels[i]]
            rows.append(row)
        return rows

    # ----------------------------------------------------------------- optimizer (spec §3.9)
    def trainable_modules(self) -> list[nn.Module]:
        """Student + E_s + E_t + H (pckd) or CRD's two Embed heads (crd); the teacher is never optimised (nor a head
        frozen because its weight is 0)."""
        heads = (self.embed_s, self.embed_t, self.align, self.crd_embed_s, self.crd_embed_t)
        return [m for m in (self.student, *heads) if m is not None]

    def configure_optimizers(self):
        h = self.hparams
        params = [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]
        if h.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=h.lr, weight_decay=h.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(h.lr_milestones), gamma=h.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def setup(self, stage: str) -> None:
        """Every stage (fit, validate, test, predict): the data's class count must equal the classifier's; otherwise
        labels beyond the classifier stop the metrics with an unrelated error, or predictions are written silently."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "num_classes", self.config.num_classes) != self.config.num_classes:
            raise ValueError(
                f"model.config.num_classes={self.config.num_classes} but the dataset has {dm.num_classes} classes"
            )
        if stage == "fit" and self.crd_loss is not None:
            if hasattr(dm, "train_labels"):
                labels = dm.train_labels()  # (N,)
                # a module that already holds banks for this split (fit again in one session) keeps them; a resumed
                # run loads its banks from the checkpoint after this hook
                if not torch.equal(self.crd_loss.train_labels.cpu(), labels):
                    self.crd_loss.init_memory(labels)
            elif self.crd_loss.num_data == 0:
                raise ValueError(
                    "model.method=crd needs the training split's labels (its memory holds one row per image): fit "
                    "with PCKDDataModule, or call init_crd_memory(train_labels) and pass batches with 'index'"
                )
            # DDP would broadcast the banks from rank 0 before every forward; every rank keeps them equal itself
            names = [f"crd_loss.{b}" for b in CRDLoss.synced_buffers]
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, names)

    def on_fit_start(self) -> None:
        if self.crd_loss is not None:
            self.crd_loss.broadcast_memory()  # every rank starts from rank 0's banks (or the checkpoint's, alike)
        dm = getattr(self.trainer, "datamodule", None)
        if self.hparams.method == "pckd" and getattr(dm, "hparams", {}).get("num_views", 4) == 1:
            rank_zero_warn("model.method=pckd with data.num_views=1: PCKD expects the 4 rotated views (spec §3.1)")
        if not math.isfinite(self.hparams.w_cc):
            raise ValueError("model.w_cc must be finite")


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(PCKDModule)
