"""The SNP-S3 LightningModule: pre-training (spec §3.4), retrieval / QA fine-tuning and zero-shot MC (spec §3.6)."""

from __future__ import annotations

import logging
import math
import random
import warnings
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_range
from mmzoo.data import read_torch
from mmzoo.distributed import gather_uneven_rows, rank_and_world
from mmzoo.metrics import IndexedMean
from mmzoo.predict import predict_dataset

from snps3.losses import (
    ITMLoss,
    LVWMLoss,
    MaskedLMLoss,
    MILNCELoss,
    MoCoLoss,
    QALoss,
    milnce_loss,
    word_clip_similarity,
)
from snps3.masking import attention_importance, attentive_mask, restore_raw_ids, select_lvwm_words
from snps3.metrics import ItemWeightedMean, retrieval_metrics
from snps3.models import MomentumEncoders, SNPS3Config, SNPS3Model, check_literal_args, load_checked

log = logging.getLogger(__name__)

__all__ = ["SNPS3Module", "in_batch_hits", "in_batch_r1"]


def in_batch_hits(sim: torch.Tensor) -> torch.Tensor:
    """1.0 for each row whose arg-max is the diagonal, else 0.0: sim (B, B) -> (B,)."""
    return (sim.argmax(1) == torch.arange(sim.shape[0], device=sim.device)).float()


def in_batch_r1(sim: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max is the diagonal: sim (B, B) -> scalar (pre-training monitor, spec §5)."""
    return in_batch_hits(sim).mean()


class SNPS3Module(pl.LightningModule):
    """SNP-S3 training and evaluation.

    ``task`` must match the data module's (decided by ``data.dataset``): ``pretrain`` (L1 + L2 + MLM text/cross +
    ITM + LVWM, attentive masking on half the steps), ``retrieval`` (L1 + L2), ``qa`` (classification on the
    cross pooler), ``mc`` (zero-shot option scoring by ``sim_head``). ``val/select`` is the model-selection score:
    level-2 t2v mean recall (retrieval), accuracy (QA, MC), in-batch level-2 R@1 (pre-training).
    """

    checkpoint_monitor = "val/select"
    checkpoint_mode = "max"

    def __init__(
        self,
        config: SNPS3Config | None = None,
        task: Literal["pretrain", "retrieval", "qa", "mc"] = "pretrain",
        init_checkpoint: str | None = None,
        with_moco: bool = True,
        moco_queue_size: int = 16384,
        moco_momentum: float = 0.9999,
        temperature: float = 0.05,
        use_l1: bool = True,
        use_l2: bool = True,
        use_mlm: bool = True,
        use_itm: bool = True,
        use_lvwm: bool = True,
        text_mlm_input: Literal["raw", "masked"] = "raw",
        attentive_mask_prob: float = 0.5,
        lvwm_num_words: int = 3,
        lvwm_stage: Literal["after", "before", "both"] = "after",
        l2_chunk: int = 5,
        eval_pair_batch: int = 256,
        lr: float = 5e-5,
        weight_decay: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_iterations: int = 2000,
        lr_steps: list[int] | None = None,
        lr_step_unit: Literal["step", "epoch"] = "step",
        nan_policy: Literal["raise", "skip"] = "raise",
        num_threads: int | None = None,
    ):
        """
        Args:
            config: the architecture (``model.config.*``).
            task: pretrain | retrieval | qa | mc; must equal the data module's task.
            init_checkpoint: a pre-training checkpoint (Lightning ``.ckpt`` or a state dict) to initialise the model
                from before fine-tuning (spec §3.6); a file that fills (almost) none of the model raises, missing or
                unexpected keys are logged as warnings.
            with_moco: L1 with momentum encoders and queues (official default, also in fine-tuning); false = in-batch
                MIL-NCE without temperature.
            moco_queue_size: K, queue length (16384).
            moco_momentum: m (0.9999).
            temperature: τ of the MoCo branch (0.05).
            use_l1, use_l2, use_mlm, use_itm, use_lvwm: pre-training terms (Table III: "GVTM" = L1+L2+ITM, "LVWM").
            text_mlm_input: the text-only MLM pass reads the ``raw`` caption (official quirk) or the ``masked`` one.
            attentive_mask_prob: probability per batch of attention-guided re-masking for the cross-modal pass (0.5).
            lvwm_num_words: N_w words per caption (3).
            lvwm_stage: word features after the shared BERT (``after``), from its embedding layer (``before``), or both.
            l2_chunk: texts per chunk of the B² level-2 cross passes (5).
            eval_pair_batch: text-video pairs per cross-encoder call in the N×N evaluation.
            lr, weight_decay, betas: AdamW (no weight decay on biases and LayerNorm).
            warmup_iterations: linear warm-up from 0.1·lr.
            lr_steps: ×0.1 decay at each listed step (or epoch, see ``lr_step_unit``).
            lr_step_unit: ``step`` or ``epoch``.
            nan_policy: a non-finite loss raises (naming the terms) or skips the step with a warning (under DDP the
                skipping rank contributes zero gradients, so that no rank waits for it).
            num_threads: CPU intra-op threads (``torch.set_num_threads``) applied at setup; null keeps torch's
                default. Tiny CPU runs on shared machines are much faster with 1.
        """
        super().__init__()
        self.save_hyperparameters()
        # task, text_mlm_input, lvwm_stage, lr_step_unit, nan_policy: each is read with if/else (an unknown
        # lvwm_stage would add no LVWM term at all)
        check_literal_args(SNPS3Module.__init__, self.hparams, "model")
        check_range("model.moco_queue_size", moco_queue_size, ge=1, integer=True)
        check_range("model.moco_momentum", moco_momentum, ge=0, le=1)
        check_range("model.temperature", temperature, gt=0)
        check_range("model.attentive_mask_prob", attentive_mask_prob, ge=0, le=1)
        check_range("model.lvwm_num_words", lvwm_num_words, ge=1, integer=True)
        check_range("model.l2_chunk", l2_chunk, ge=1, integer=True)
        check_range("model.eval_pair_batch", eval_pair_batch, ge=1, integer=True)
        check_range("model.lr", lr, ge=0)
        check_range("model.weight_decay", weight_decay, ge=0)
        if len(betas) != 2:
            raise ValueError(f"model.betas={betas!r}: expected two moment rates")
        for i, beta in enumerate(betas):
            check_range(f"model.betas[{i}]", beta, ge=0, lt=1)
        check_range("model.warmup_iterations", warmup_iterations, integer=True)  # <= 0: no warm-up
        for i, step in enumerate(lr_steps or []):
            check_range(f"model.lr_steps[{i}]", step, ge=0, integer=True)
        if num_threads is not None:
            check_range("model.num_threads", num_threads, ge=0, integer=True)  # 0 keeps torch's default
        self.config = config or SNPS3Config()
        self.model = SNPS3Model(self.config)
        if init_checkpoint is not None:
            self._load_init(init_checkpoint)
        self.moco_active = with_moco and use_l1 and task in ("pretrain", "retrieval")
        if self.moco_active:
            self.momentum = MomentumEncoders(self.model)
            self.moco_loss = MoCoLoss(moco_queue_size, self.model.hidden_size, temperature)
        self.milnce_l1 = MILNCELoss()
        self.lvwm_loss = LVWMLoss()
        self.mlm_loss = MaskedLMLoss()
        self.itm_loss = ITMLoss()
        self.qa_loss = QALoss()
        self.special_ids = (self.config.cls_token_id, self.config.sep_token_id, self.config.pad_token_id)
        # QA / MC correctness per question, keyed by dataset index: a repeat a DistributedSampler pads with counts once
        self.accuracy = torch.nn.ModuleDict({s: IndexedMean() for s in ("val", "test")})
        if task == "pretrain":  # validation losses and monitors per item, keyed by dataset index (the same)
            n_terms = sum(map(len, self.pretrain_term_names()))
            self.pretrain_terms = torch.nn.ModuleDict({s: ItemWeightedMean(n_terms) for s in ("val", "test")})
        self._eval: dict[str, list] = {}
        self._unreadable: dict[str, list[int]] = {}
        self.unused_modules = self._unused_in_training()
        for name in self.unused_modules:  # built (same initialisation, same checkpoint keys) but frozen
            self.model.get_submodule(name).requires_grad_(False)
        if self.unused_modules:
            log.info("model.task=%s: frozen, no training loss reaches them: %s", task, self.unused_modules)

    def _unused_in_training(self) -> list[str]:
        """Submodules of ``self.model`` that no training loss term of this task and these switches reaches.

        They are frozen (``requires_grad=False``, hence outside the optimiser) rather than left out, so that the
        random initialisation of every other module and the checkpoint layout stay those of the full model. A
        trainable tensor without a gradient would stop DDP with ``find_unused_parameters=False``; AdamW never
        moved such tensors anyway (no gradient, no update, no weight decay). ``mc`` trains nothing; with every
        loss term off nothing is frozen (the training step names the problem).
        """
        hp = self.hparams
        if hp.task == "pretrain":
            after = hp.use_lvwm and hp.lvwm_stage in ("after", "both")
            before = hp.use_lvwm and hp.lvwm_stage in ("before", "both")
            text_encoder = hp.use_l1 or hp.use_mlm or after  # text-only pass: L1 pooler, text MLM, LVWM words
            text_embeddings = text_encoder or before
            text_pooler = hp.use_l1
            cross = hp.use_mlm or hp.use_itm or hp.use_l2  # cross pass: cross MLM, ITM, L2
            cross_pooler = hp.use_itm or hp.use_l2
            heads = {
                "clip_mlp": hp.use_l1 or hp.use_lvwm,
                "sim_head": hp.use_l2,
                "itm_head": hp.use_itm,
                "mlm_text": hp.use_mlm,
                "mlm_cross": hp.use_mlm,
            }
            any_term = hp.use_l1 or hp.use_l2 or hp.use_mlm or hp.use_itm or hp.use_lvwm
        elif hp.task == "retrieval":
            text_encoder = text_embeddings = text_pooler = hp.use_l1
            cross = cross_pooler = hp.use_l2
            heads = {"clip_mlp": hp.use_l1, "sim_head": hp.use_l2}
            any_term = hp.use_l1 or hp.use_l2
        elif hp.task == "qa":
            text_encoder = text_embeddings = text_pooler = False
            cross = cross_pooler = any_term = True
            heads = {"qa_head": True}
        else:
            return []
        if not any_term:
            return []
        used = {
            **dict.fromkeys(("clip_mlp", "sim_head", "itm_head", "mlm_text", "mlm_cross", "qa_head"), False),
            **heads,
            "bert.pooler": text_pooler,
        }
        if self.model.p3e_cross is None:  # SNP: the text BERT is also the cross encoder
            used["bert.embeddings"] = text_embeddings or cross
            used["bert.encoder"] = text_encoder or cross
            used["cross_pooler"] = cross_pooler
        else:
            used["bert.embeddings"] = text_embeddings
            used["bert.encoder"] = text_encoder
            used["p3e_cross.embeddings"] = used["p3e_cross.encoder"] = cross
            used["p3e_cross.pooler"] = cross_pooler
        present = {name for name, _ in self.model.named_modules()}
        return [name for name, u in used.items() if not u and name in present]

    def _load_init(self, path: str) -> None:
        try:
            state = read_torch(path, "model.init_checkpoint", weights_only=False)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"model.init_checkpoint={path!r} does not exist: supply an SNP-S3 pre-training "
                "checkpoint (none is released; pre-train with a pretrain_* config)"
            ) from err
        state = state.get("state_dict", state)
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")} or state
        # a QA head absent from (or differently sized in) a pre-training/retrieval checkpoint is expected
        if self.model.qa_head is not None:
            own = self.model.qa_head.weight.shape
            if "qa_head.weight" in state and state["qa_head.weight"].shape != own:
                state = {k: v for k, v in state.items() if not k.startswith("qa_head.")}
        load_checked(self.model, state, "model.init_checkpoint", path, expected_leftovers=("qa_head.",))

    def setup(self, stage: str) -> None:
        if self.hparams.num_threads:
            torch.set_num_threads(self.hparams.num_threads)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "task", self.hparams.task) != self.hparams.task:
            raise ValueError(
                f"model.task={self.hparams.task!r} but data.dataset={dm.hparams.dataset!r} is a "
                f"{dm.task!r} dataset: set model.task={dm.task!r}"
            )
        if dm is not None and self.hparams.task == "qa":
            n_data, n_model = getattr(dm.hparams, "num_answers", None), self.config.num_answers
            if n_data is not None and (n_data <= 0 or n_data != n_model):
                raise ValueError(
                    f"QA needs data.num_answers (= {n_data}) and model.config.num_answers (= {n_model}) to be the "
                    "same positive answer-vocabulary size (1500 MSRVTT-QA, 1000 MSVD-QA); otherwise every label "
                    "falls outside the head and nothing is learned"
                )

    # ------------------------------------------------------------------------------------------- shared pieces
    def level2_matrix(self, ids: torch.Tensor, attn: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """s[i, j] = sim_head(cross(caption_i, video_j)) for every local pair, in chunks of ``l2_chunk`` texts.

        ids, attn (B_t, L), visual (B_v, T, D) -> (B_t, B_v).
        """
        rows = []
        bv = visual.shape[0]
        for a in range(0, ids.shape[0], self.hparams.l2_chunk):
            ci, ca = ids[a : a + self.hparams.l2_chunk], attn[a : a + self.hparams.l2_chunk]
            n = ci.shape[0]
            out = self.model.cross(
                ci.repeat_interleave(bv, 0), ca.repeat_interleave(bv, 0), visual.repeat(n, 1, 1)
            )  # pairs (n·B_v)
            rows.append(self.model.sim_score(out.pooled).view(n, bv))  # (n, B_v)
        return torch.cat(rows, 0)  # (B_t, B_v)

    def global_l1(
        self, batch: dict, t: torch.Tensor, v: torch.Tensor, train: bool, reduction: Literal["mean", "none"] = "mean"
    ) -> dict[str, torch.Tensor]:
        """L1 (spec §3.4 a): MoCo (momentum update, keys, queue losses, enqueue) or in-batch MIL-NCE; scalars, or
        per sample (B,) with ``reduction="none"``."""
        if not self.moco_active:
            return {"l1": self.milnce_l1(t, v, reduction)}
        if train:
            self.momentum.update(self.model, self.hparams.moco_momentum)
        t_key, v_key = self.momentum.keys(
            batch["input_ids"], batch["attention_mask"], batch["frames"], batch.get("pad_mask")
        )
        out = self.moco_loss(t, v, t_key, v_key, reduction)
        if train:
            self.moco_loss.enqueue(t_key, v_key)
        return out

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> bool:
        bad = [k for k, v in losses.items() if not torch.isfinite(v)]
        if not bad:
            return True
        if self.hparams.nan_policy == "raise":
            raise FloatingPointError(
                f"non-finite loss terms {bad} at step {self.global_step} (set model.nan_policy=skip to skip such steps)"
            )
        rank_zero_warn(f"skipping step {self.global_step}: non-finite loss terms {bad}")
        return False

    def _skipped_step_loss(self) -> torch.Tensor | None:
        """What a skipped training step returns. On one process None (Lightning skips backward and the optimizer
        step). Under DDP every rank must take part in the gradient all-reduce, so a rank that skips returns a zero
        loss over all trainable parameters instead: its gradients are zero and the others' are averaged with them
        (the optimizer still steps, so momentum and weight decay move the weights as on a zero-gradient step)."""
        if self.trainer.world_size <= 1:
            return None
        return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)

    # ---------------------------------------------------------------------------------------------- pre-training
    def pretrain_term_names(self) -> tuple[list[str], list[str]]:
        """(loss terms, monitors) that :meth:`pretrain_losses` returns with this module's switches."""
        hp = self.hparams
        losses = [k for k, on in (("l1", hp.use_l1), ("mlm_cross", hp.use_mlm), ("mlm_text", hp.use_mlm)) if on]
        losses += [k for k, on in (("itm", hp.use_itm), ("l2", hp.use_l2), ("lvwm", hp.use_lvwm)) if on]
        monitors = ["r1_l1"] + [k for k, on in (("mlm_acc", hp.use_mlm), ("itm_acc", hp.use_itm)) if on]
        monitors += ["r1_lvwm"] if hp.use_lvwm else []
        return losses, monitors + (["r1_l2"] if hp.use_l2 else [])

    def pretrain_losses(
        self, batch: dict, train: bool, reduction: Literal["mean", "none"] = "mean"
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Every pre-training term (spec §3.4) and the monitors. Returns (losses, monitors).

        ``reduction="mean"``: the batch's scalars (``mlm_acc`` only when a token is masked). ``"none"`` (evaluation):
        every term and monitor of :meth:`pretrain_term_names` per item of the batch, as a pair (values (B,),
        weights (B,)) whose Σ values / Σ weights is the batch's scalar: weight 1 per item, except for the token-level
        MLM terms and ``mlm_acc`` (the item's sum over its masked tokens, weighted by their count). A contrastive
        term's value for an item is its row of the batch's (for L1 without MoCo and LVWM: gathered) matrix.
        """
        hp, m = self.hparams, self.model
        per_item = reduction == "none"
        frames, pad_mask = batch["frames"], batch.get("pad_mask")
        ids, attn = batch["input_ids"], batch["attention_mask"]  # raw caption (B, L)
        mids, mlabels = batch["mlm_input_ids"], batch["mlm_labels"]  # data-side masked caption and labels (B, L)
        # the re-masked caption feeds the cross pass, so it reaches the MLM heads and the ITM positive
        attentive = train and (hp.use_mlm or hp.use_itm) and random.random() < hp.attentive_mask_prob
        visual = m.encode_visual(frames, pad_mask)  # (B, T, D)
        v = m.clip_embed(visual)  # (B, T, D)
        text = m.encode_text(ids, attn, output_attentions=attentive)  # text-only pass on the raw caption
        t = m.text_embed(text)  # (B, D)
        ones = torch.ones(ids.shape[0], device=ids.device)  # (B,) weight of a per-item term
        losses: dict[str, torch.Tensor] = {}
        mon: dict[str, torch.Tensor] = {}
        if hp.use_l1:
            l1 = self.global_l1(batch, t, v, train, reduction)["l1"]
            losses["l1"] = (l1, ones) if per_item else l1
        hits = in_batch_hits(torch.logsumexp(torch.einsum("id,jcd->ijc", t, v), -1).detach())  # (B,)
        mon["r1_l1"] = (hits, ones) if per_item else hits.mean()
        cross_ids, labels = mids, mlabels
        if attentive:  # spec §3.4 f: importance a_p = Σ_layers Σ_queries mean_heads A[q, p], all query rows
            cross_ids, labels = attentive_mask(
                ids, attn, attention_importance(text.attentions), self.special_ids, self.config.mask_token_id
            )
        cross = m.cross(cross_ids, attn, visual)  # (masked caption, own video)
        if hp.use_mlm:
            logits_c = m.mlm_logits(cross.text_hidden, "cross")  # (B, L, V)
            text_h = text.hidden if hp.text_mlm_input == "raw" else m.encode_text(cross_ids, attn).hidden
            logits_t = m.mlm_logits(text_h, "text")  # (B, L, V)
            sel = labels >= 0  # (B, L) masked tokens
            correct = (logits_c.argmax(-1) == labels) & sel  # (B, L)
            if per_item:
                n_masked = sel.sum(1).float()  # (B,) weight: the item's masked tokens
                losses["mlm_cross"] = (self.mlm_loss(logits_c, labels, "none").sum(1), n_masked)
                losses["mlm_text"] = (self.mlm_loss(logits_t, labels, "none").sum(1), n_masked)
                mon["mlm_acc"] = (correct.sum(1).float(), n_masked)
            else:
                losses["mlm_cross"] = self.mlm_loss(logits_c, labels)
                losses["mlm_text"] = self.mlm_loss(logits_t, labels)
                if sel.any():
                    mon["mlm_acc"] = correct[sel].float().mean()
        if hp.use_itm:
            neg = m.cross(batch["neg_input_ids"], batch["neg_attention_mask"], visual)
            logits = m.itm_head(torch.cat([cross.pooled, neg.pooled], 0))  # (2B, 2)
            target = torch.cat([torch.ones_like(ids[:, 0]), torch.zeros_like(ids[:, 0])])  # (2B,)
            itm, itm_hits = self.itm_loss(logits, target, reduction), (logits.argmax(-1) == target).float()
            if per_item:  # an item's two pairs (its caption, its negative caption) -> their mean
                losses["itm"] = (itm.view(2, -1).mean(0), ones)
                mon["itm_acc"] = (itm_hits.view(2, -1).mean(0), ones)
            else:
                losses["itm"], mon["itm_acc"] = itm, itm_hits.mean()
        if hp.use_l2:
            s = self.level2_matrix(mids, attn, visual)  # (B, B) on the data-side caption
            l2, hits = milnce_loss(s[:, :, None], reduction), in_batch_hits(s.detach())
            losses["l2"] = (l2, ones) if per_item else l2
            mon["r1_l2"] = (hits, ones) if per_item else hits.mean()
        if hp.use_lvwm:
            raw = restore_raw_ids(mids, mlabels)  # (B, L)
            if "word_significant" not in batch and not getattr(self, "_warned_lvwm_words", False):
                self._warned_lvwm_words = True
                rank_zero_warn(
                    "model.use_lvwm is on but data.significant_words is null: LVWM picks random non-special words "
                    "instead of significant ones (spec §3.4 e); set data.significant_words to a count_reprocess_*.json"
                )
            lvwm_special = (*self.special_ids, self.config.mask_token_id)  # never [CLS], [SEP], [PAD], [MASK]
            pos = select_lvwm_words(raw, attn, batch.get("word_significant"), lvwm_special, hp.lvwm_num_words)
            gather = pos[:, :, None].expand(-1, -1, m.hidden_size)  # (B, N_w, D)
            total, monitored = 0.0, None
            if hp.lvwm_stage in ("after", "both"):
                hidden = text.hidden if torch.equal(raw, ids) else m.encode_text(raw, attn).hidden
                monitored = hidden.gather(1, gather)  # (B, N_w, D) words after the shared BERT
                total = total + self.lvwm_loss(monitored, v, reduction)
            if hp.lvwm_stage in ("before", "both"):
                emb = m.bert.embeddings(input_ids=raw, token_type_ids=torch.zeros_like(raw))  # (B, L, D)
                words = emb.gather(1, gather)  # (B, N_w, D) words from the embedding layer
                monitored = words if monitored is None else monitored
                total = total + self.lvwm_loss(words, v, reduction)
            losses["lvwm"] = (total, ones) if per_item else total
            # in-batch R@1 of the word-clip matrix (spec §5), a caption's score for a video = logsumexp over its
            # clips of S[i, j, c], as for level 1; the words after the BERT when both stages are on
            sim_w = torch.logsumexp(word_clip_similarity(monitored.detach(), v.detach()), -1)  # (B, B)
            hits = in_batch_hits(sim_w)
            mon["r1_lvwm"] = (hits, ones) if per_item else hits.mean()
        return losses, mon

    # ---------------------------------------------------------------------------------------------- fine-tuning
    def retrieval_losses(self, batch: dict, train: bool) -> dict[str, torch.Tensor]:
        """Retrieval fine-tuning (spec §3.6): L1 + L2 on unmasked captions."""
        m = self.model
        visual = m.encode_visual(batch["frames"], batch.get("pad_mask"))  # (B, T, D)
        losses = {}
        if self.hparams.use_l1:
            t = m.text_embed(m.encode_text(batch["input_ids"], batch["attention_mask"]))
            losses.update({k: v for k, v in self.global_l1(batch, t, m.clip_embed(visual), train).items() if k == "l1"})
        if self.hparams.use_l2:
            losses["l2"] = milnce_loss(
                self.level2_matrix(batch["input_ids"], batch["attention_mask"], visual)[:, :, None]
            )
        return losses

    def qa_forward(self, batch: dict) -> torch.Tensor:
        """(B, num_answers) answer logits from the cross pooler on (question, video)."""
        visual = self.model.encode_visual(batch["frames"], batch.get("pad_mask"))
        return self.model.qa_logits(self.model.cross(batch["input_ids"], batch["attention_mask"], visual).pooled)

    def mc_scores(self, batch: dict) -> torch.Tensor:
        """(B, n_options) sim_head scores of every option against its video (zero-shot MC, spec §3.6)."""
        visual = self.model.encode_visual(batch["frames"], batch.get("pad_mask"))  # (B, T, D)
        b, n, length = batch["option_ids"].shape
        out = self.model.cross(
            batch["option_ids"].view(b * n, length),
            batch["option_mask"].view(b * n, length),
            visual.repeat_interleave(n, 0),
        )  # (B·n) pairs
        return self.model.sim_score(out.pooled).view(b, n)  # (B, n)

    @staticmethod
    def qa_correct(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per question 1 if the arg-max answer is right (answers outside the vocabulary count wrong)."""
        pred = logits.argmax(-1)
        if "labels" in batch:
            return batch["labels"].gather(1, pred[:, None]).squeeze(1).gt(0).float()
        return (pred == batch["label"]).float()

    # ----------------------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:
            return None
        task = self.hparams.task
        mon: dict[str, torch.Tensor] = {}
        if task == "pretrain":
            losses, mon = self.pretrain_losses(batch, train=True)
        elif task == "retrieval":
            losses = self.retrieval_losses(batch, train=True)
        elif task == "qa":
            losses = {"qa": self.qa_loss(self.qa_forward(batch), batch.get("labels", batch.get("label")))}
        else:
            raise ValueError("model.task='mc' is zero-shot: run `snps3 test` with a retrieval checkpoint")
        if not losses:
            raise ValueError("every loss term is switched off (model.use_l1/use_l2/use_mlm/use_itm/use_lvwm)")
        if not self._check_finite(losses):
            return self._skipped_step_loss()
        loss = sum(losses.values())  # unweighted sum (spec §3.4 Total)
        b = batch["frames"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for k, val in {**losses, **mon}.items():
            self.log(f"train/{'loss_' if k in losses else ''}{k}", val, batch_size=b)
        return loss

    def _eval_step(self, batch: dict | None, stage: str) -> None:
        if batch is None:
            return
        task = self.hparams.task
        if "unreadable" in batch and batch["unreadable"].any():
            self._unreadable.setdefault(stage, []).extend(batch["item_index"][batch["unreadable"]].tolist())
        if task == "pretrain":  # logged at the end of the epoch (_pretrain_epoch_end)
            losses, mon = self.pretrain_losses(batch, train=False, reduction="none")
            terms = {**losses, **mon}
            names = [k for group in self.pretrain_term_names() for k in group]
            assert sorted(terms) == sorted(names), (sorted(terms), names)
            values = torch.stack([terms[k][0] for k in names], 1)  # (B, N_terms)
            weights = torch.stack([terms[k][1] for k in names], 1)  # (B, N_terms)
            self.pretrain_terms[stage].update(values, weights, batch["item_index"])
        elif task == "retrieval":
            self._collect(batch)
        elif task == "qa":  # logged at the end of the epoch (_accuracy_epoch_end)
            self.accuracy[stage].update(self.qa_correct(self.qa_forward(batch), batch), batch["item_index"])
        else:
            correct = (self.mc_scores(batch).argmax(-1) == batch["answer"]).float()
            self.accuracy[stage].update(correct, batch["item_index"])

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict | None, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict | None, batch_idx: int) -> dict[str, torch.Tensor] | None:
        """qa: predicted answer index ``answer`` (B,); mc: predicted option ``option`` (B,); retrieval/pretrain:
        level-1 ``text_embed`` (one per caption line: N_lines, D) and ``clip_embed`` (B, T, D). Every task also
        returns the dataset index of each item ``item_index`` (B,) and ``unreadable`` (B,) when the batch has them
        (evaluation items), and the caption lines' ``text_index`` (and per item ``num_captions`` in retrieval)."""
        if batch is None:
            return None
        task = self.hparams.task
        out = {k: batch[k] for k in ("item_index", "unreadable") if k in batch}
        if task == "qa":
            return {**out, "answer": self.qa_forward(batch).argmax(-1)}
        if task == "mc":
            return {**out, "option": self.mc_scores(batch).argmax(-1)}
        m = self.model
        out.update({k: batch[k] for k in ("text_index", "num_captions") if k in batch})
        return {
            **out,
            "text_embed": m.text_embed(m.encode_text(batch["input_ids"], batch["attention_mask"])),
            "clip_embed": m.clip_embed(m.encode_visual(batch["frames"], batch.get("pad_mask"))),
        }

    def _lines_per_item(self, prediction: dict) -> list[int]:
        """Caption lines of each item of a retrieval/pretrain prediction (1 per item without ``num_captions``)."""
        b = len(prediction["clip_embed"])
        return prediction["num_captions"].tolist() if "num_captions" in prediction else [1] * b

    def prediction_rows(self, prediction: dict) -> list[dict]:
        """One row per item of the predict split (the ``test`` annotation files), in loader order.

        Every row has ``item_index`` (the item's index in the predict dataset), ``unreadable`` (true: its video
        could not be read under ``data.on_corrupt: skip`` and it was predicted from blank frames) and
        ``clip_name`` (the annotation's video or image name). Names come from the predict dataset; when it cannot
        be found, only the indices are written.

        * ``qa`` (one row per question line): ``question`` (the line's ``caption``), ``answer_index`` (arg-max of
          the answer logits) and ``answer`` (that answer's string in ``data.answer_list``; null without one).
        * ``mc`` (one row per question line): ``qid`` (the line's, null if absent), ``option_index`` (the arg-max
          option of the ``sim_head`` scores) and ``option`` (its text).
        * ``retrieval`` (one row per video; its caption lines are those of the annotation files that name it):
          ``text_index`` (the caption lines, positions in the concatenated annotation lines) and ``captions``
          (their texts); the embeddings are in :meth:`prediction_arrays`.
        * ``pretrain`` (one row per clip, segment or image): ``start``, ``end``, ``type`` of the group,
          ``text_index`` (the annotation line whose caption was encoded) and ``caption`` (its text: empty when
          the line's caption was empty, in which case ASR text was encoded if ``data.asr_root`` is set).
        """
        ds = predict_dataset(self)
        task = self.hparams.task
        b = len(prediction["answer" if task == "qa" else "option" if task == "mc" else "clip_embed"])
        idx = prediction["item_index"].tolist() if "item_index" in prediction else [None] * b
        unreadable = prediction["unreadable"].tolist() if "unreadable" in prediction else [None] * b
        lines = prediction["text_index"].tolist() if "text_index" in prediction else [None] * b
        counts = [1] * b if task in ("qa", "mc") else self._lines_per_item(prediction)
        starts = [sum(counts[:j]) for j in range(b)]
        known = getattr(ds, "rows", None) is not None and None not in idx
        answer_names = {v: k for k, v in getattr(ds, "answers", {}).items()}
        out = []
        for j, i in enumerate(idx):
            row = {"item_index": i}
            own = lines[starts[j] : starts[j] + counts[j]]
            if task == "qa":
                a = int(prediction["answer"][j])
                if known:
                    row.update(clip_name=ds.rows[i]["clip_name"], question=ds.rows[i]["caption"])
                row.update(unreadable=unreadable[j], answer_index=a, answer=answer_names.get(a))
            elif task == "mc":
                o = int(prediction["option"][j])
                if known:
                    row.update(qid=ds.rows[i].get("qid"), clip_name=ds.rows[i]["clip_name"])
                row.update(unreadable=unreadable[j], option_index=o)
                if known:
                    row["option"] = ds.rows[i]["options"][o]
            elif task == "retrieval":
                if known and hasattr(ds, "videos"):
                    row["clip_name"] = ds.videos[i]
                row.update(unreadable=unreadable[j], text_index=own)
                if known and None not in own:
                    row["captions"] = [ds.rows[t]["caption"] for t in own]
            else:
                if known and hasattr(ds, "groups"):
                    row.update(zip(("clip_name", "start", "end", "type"), ds.groups[i][0]))
                row.update(unreadable=unreadable[j], text_index=own[0])
                if known and own[0] is not None:
                    row["caption"] = ds.rows[own[0]]["caption"]
            out.append(row)
        return out

    def prediction_arrays(self, prediction: dict) -> dict[str, torch.Tensor]:
        """Level-1 embeddings, row ``i`` belonging to JSON line ``i`` (retrieval and pretrain; nothing for qa, mc).

        ``clip_embed`` (N, T, D): the L2-normalised clip embeddings ``v`` of the item's T frames. ``text_embed``:
        pretrain (N, D), the encoded caption's ``t``; retrieval (N, K, D), the ``t`` of the video's caption lines in
        the row's ``text_index`` order, K the most caption lines any video of the predict dataset has, and the
        rows past a video's own lines NaN.
        """
        if self.hparams.task not in ("retrieval", "pretrain"):
            return {}
        text, clips = prediction["text_embed"], prediction["clip_embed"]
        if self.hparams.task == "pretrain":
            return {"text_embed": text, "clip_embed": clips}
        counts = self._lines_per_item(prediction)
        k = getattr(predict_dataset(self), "max_lines", None) or max(counts)
        padded = text.new_full((len(counts), k, text.shape[-1]), float("nan"))
        for b, part in enumerate(text.split(counts)):
            padded[b, : len(part)] = part
        return {"text_embed": padded, "clip_embed": clips}

    # ------------------------------------------------------------------------------------ N×N retrieval evaluation
    def on_validation_epoch_start(self) -> None:
        self._eval, self._unreadable = {}, {}

    def on_test_epoch_start(self) -> None:
        self._eval, self._unreadable = {}, {}

    def _report_unreadable(self, stage: str) -> int:
        """Warn (count and names) about evaluation items whose video could not be read (``on_corrupt: skip``:
        they were scored on blank frames). Collective over ranks; returns the total count."""
        local = sorted(set(self._unreadable.get(stage, [])))
        total = len(local)
        if self.trainer.world_size > 1:
            count = torch.tensor(float(total), device=self.device)
            total = int(self.trainer.strategy.reduce(count, reduce_op="sum").item())
        if not total:
            return 0
        ds = getattr(getattr(self.trainer, "datamodule", None), "datasets", {}).get(stage)
        names = [ds.describe(i) if hasattr(ds, "describe") else str(i) for i in local]
        if local:
            log.warning("%s: unreadable videos on this rank (%d): %s", stage, len(local), names)
        rank_zero_warn(
            f"{stage}: {total} evaluation item(s) have unreadable videos (data.on_corrupt=skip) and were scored "
            f"on blank frames, so these metrics are not those of the complete {stage} set; e.g. {names[:10]}"
        )
        return total

    def _collect(self, batch: dict) -> None:
        """Record one evaluation batch: per caption line (text side) and per video (visual side). Batches from
        ``RetrievalDataset`` hold each video once with all its lines (``text_video_index``); a batch of one line per
        item (no ``text_video_index``) pairs line b with video b."""
        m = self.model
        visual = m.encode_visual(batch["frames"], batch.get("pad_mask"))  # (B, T, D)
        rec = {
            "input_ids": batch["input_ids"],  # (N_lines, L)
            "attention_mask": batch["attention_mask"],
            "t": m.text_embed(m.encode_text(batch["input_ids"], batch["attention_mask"])),
            "text_index": batch["text_index"],
            "caption_index": batch["caption_index"],
            "text_video_index": batch.get("text_video_index", batch["video_index"]),
            "visual": visual,  # (B, T, D)
            "v": m.clip_embed(visual),
            "video_index": batch["video_index"],
        }
        for k, val in rec.items():
            self._eval.setdefault(k, []).append(val.detach())

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _eval_epoch_end(self, stage: str) -> None:
        """Epoch-end reports. Every rank runs the same collectives, including a rank that evaluated nothing: whether
        a metric is reported is decided from all ranks' records together."""
        self._report_unreadable(stage)
        task = self.hparams.task
        if task == "pretrain":
            self._pretrain_epoch_end(stage)
        elif task == "retrieval":
            self._retrieval_epoch_end(stage)
        elif task in ("qa", "mc"):
            self._accuracy_epoch_end(stage)

    def _pretrain_epoch_end(self, stage: str) -> None:
        """Pre-training losses and monitors over the distinct items of all ranks (the metric's sync gathers them):
        ``<stage>/loss_<term>`` (their sum ``<stage>/loss``), the monitors, and ``<stage>/select`` = ``r1_l2``.

        Each item counts once, also one that a ``DistributedSampler`` repeats to pad its last round; an MLM loss
        is the mean over the masked tokens of those items (0 when none was masked, as in training; ``mlm_acc`` is
        then not logged)."""
        metric = self.pretrain_terms[stage]
        with warnings.catch_warnings():  # a rank without items still syncs; "compute before update" is expected
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            out = metric.compute()
        metric.reset()
        if out["items"] == 0:  # no rank evaluated an item (the same on every rank: the records are gathered)
            return
        loss_names, monitor_names = self.pretrain_term_names()
        mean = out["mean"].float().to(self.device)
        weighted = dict(zip(loss_names + monitor_names, (out["weight"] > 0).tolist(), strict=True))
        result = dict(zip(loss_names + monitor_names, mean, strict=True))
        losses = {k: result[k] if weighted[k] else mean.new_zeros(()) for k in loss_names}
        self.log(f"{stage}/loss", sum(losses.values()), sync_dist=True)
        for k, val in losses.items():
            self.log(f"{stage}/loss_{k}", val, sync_dist=True)
        for k in monitor_names:
            if weighted[k]:
                self.log(f"{stage}/{k}", result[k], sync_dist=True)
        if "r1_l2" in result:
            self.log(f"{stage}/select", result["r1_l2"], sync_dist=True)

    def _accuracy_epoch_end(self, stage: str) -> None:
        """QA / MC accuracy over the distinct questions of all ranks (the metric's sync gathers them)."""
        metric = self.accuracy[stage]
        with warnings.catch_warnings():  # a rank without questions still syncs; "compute before update" is expected
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            value = metric.compute()
        metric.reset()
        if torch.isnan(value):  # no rank evaluated a question (the same on every rank: the value is gathered)
            return
        value = value.float().to(self.device)
        self.log(f"{stage}/{'acc' if self.hparams.task == 'qa' else 'mc_acc'}", value, sync_dist=True)
        self.log(f"{stage}/select", value, sync_dist=True)

    def _gathered(self) -> dict[str, torch.Tensor]:
        """Concatenate this epoch's records over batches and ranks (ranks may hold different numbers of caption
        lines: videos have different caption counts). A rank without records takes each record's row shape and dtype
        from a rank that has them and contributes no rows; {} when no rank has any."""
        local = {k: torch.cat(vals, 0) for k, vals in self._eval.items()}
        if self.trainer.world_size <= 1:
            return local
        specs: list = [None] * self.trainer.world_size
        dist.all_gather_object(specs, {k: (tuple(x.shape[1:]), x.dtype) for k, x in local.items()} or None)
        spec = next((s for s in specs if s), None)
        if spec is None:
            return {}
        out = {}
        for k, (row, dtype) in spec.items():
            x = local[k] if k in local else torch.empty((0, *row), dtype=dtype, device=self.device)
            out[k] = gather_uneven_rows([x], self.device)[0][0]
        return out

    @torch.no_grad()
    def _retrieval_epoch_end(self, stage: str) -> None:
        """Full N_text × N_video level-1 and level-2 matrices (spec §3.6), R@K / MdR both directions."""
        from tqdm import tqdm

        rec = self._gathered()
        if not rec:
            self._eval = {}
            return
        _, first_text = _unique_first(rec["text_index"])
        vid_ids, first_vid = _unique_first(rec["video_index"])
        ids, attn = rec["input_ids"][first_text], rec["attention_mask"][first_text]
        t, cap = rec["t"][first_text], rec["caption_index"][first_text]
        visual, v = rec["visual"][first_vid], rec["v"][first_vid]
        # ground truth: caption string c matches every video any line pairs with c
        pair = torch.zeros(int(rec["caption_index"].max()) + 1, len(vid_ids), dtype=torch.bool, device=t.device)
        col = torch.searchsorted(vid_ids, rec["text_video_index"])
        pair[rec["caption_index"], col] = True
        gt = pair[cap]  # (N_t, N_v)
        sim1 = torch.logsumexp(torch.einsum("id,jcd->ijc", t.float(), v.float()), -1)  # (N_t, N_v) level 1
        # level 2: N_t·N_v cross passes; rows split over ranks, pairs batched
        rank, world = rank_and_world()
        rows = list(range(rank, len(t), world))
        n_rows = math.ceil(len(t) / world)
        sim2_local = torch.zeros(n_rows, len(v), device=t.device)  # float32 even when t is bf16 (bf16-mixed)
        pairs = [(r, j) for r in range(len(rows)) for j in range(len(v))]
        step = self.hparams.eval_pair_batch
        bar = tqdm(
            range(0, len(pairs), step),
            desc=f"{stage}: level-2 {len(t)}x{len(v)} cross passes",
            disable=rank != 0 or len(pairs) <= step,
        )
        for a in bar:
            chunk = torch.tensor(pairs[a : a + step], device=t.device)
            ti = torch.tensor(rows, device=t.device)[chunk[:, 0]]
            out = self.model.cross(ids[ti], attn[ti], visual[chunk[:, 1]])
            sim2_local[chunk[:, 0], chunk[:, 1]] = self.model.sim_score(out.pooled).float()
        if world > 1:
            allrows = self.all_gather(sim2_local)  # (W, n_rows, N_v)
            sim2 = torch.zeros(len(t), len(v), device=t.device)
            for r in range(world):
                idx = list(range(r, len(t), world))
                sim2[idx] = allrows[r, : len(idx)]
        else:
            sim2 = sim2_local
        n = len(first_text)
        for name, sim in (("l1", sim1), ("l2", sim2)):
            for direction, s, g in (("t2v", sim, gt), ("v2t", sim.T, gt.T)):
                for k, val in retrieval_metrics(s, g).items():
                    self.log(f"{stage}/{name}_simi_{direction}-{k}", val, sync_dist=True, batch_size=n)
        self.log(f"{stage}/select", retrieval_metrics(sim2, gt)["mean_recall"], sync_dist=True, batch_size=n)
        self._eval = {}

    # --------------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        """AdamW (betas 0.9/0.98), no weight decay on biases/LayerNorm; linear warm-up from 0.1·lr, ×0.1 steps."""
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 else decay).append(p)  # biases and LayerNorm weights are the 1-D tensors
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        steps = sorted(hp.lr_steps or [])

        def factor(step: int) -> float:
            warm = 1.0
            if hp.warmup_iterations > 0 and step < hp.warmup_iterations:
                warm = 0.1 + 0.9 * step / hp.warmup_iterations
            now = step if hp.lr_step_unit == "step" else self._epoch_of_next_step()
            return warm * 0.1 ** sum(now >= s for s in steps)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _epoch_of_next_step(self) -> int:
        """The 0-based epoch that the optimiser step after this scheduler update belongs to. The scheduler is
        updated after every training batch, so after the last batch of epoch e the next step is the first of e + 1
        (``current_epoch`` still reads e then): a decay "after epoch k" must already apply to that step."""
        trainer = self.trainer
        return trainer.current_epoch + int(bool(trainer.training and trainer.is_last_batch))


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(SNPS3Module)


def _unique_first(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique values of ``index`` and the position of each one's first occurrence."""
    uniq, inverse = torch.unique(index, return_inverse=True)
    first = torch.full((len(uniq),), len(index), dtype=torch.long, device=index.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(index), device=index.device), reduce="amin")
    return uniq, first
