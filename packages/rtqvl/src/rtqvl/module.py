"""The RTQ LightningModule: one module, four task heads chosen by ``config.task`` (spec §3.2, §3.3).

Step flow: batch → model → losses → ``self.log``. Retrieval evaluation encodes every video once and every caption
once (evaluation batches hold videos with all their captions), builds the cosine matrix and re-ranks the top-k with
ITM at epoch end; captioning / QA generate with beam search.
"""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import torch
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_choice, check_range
from mmzoo.metrics import first_of_each_id

from rtqvl.losses import AnswerLoss, CaptionLoss, ITCLoss, ITMLoss, MultipleChoiceLoss, alpha_ramp, itm_negative_indices
from rtqvl.metrics import (
    CAPTION_BACKENDS,
    TIE_RULES,
    CaptionBackend,
    CaptionMetrics,
    NExTQAAccuracy,
    QAAccuracy,
    RetrievalMetrics,
    TieRule,
)
from rtqvl.models.rtq import RTQConfig, build_model, momentum_update
from rtqvl.models.weights import load_pretrained
from rtqvl.token_store import StoreLocation, VideoTokenStore

__all__ = ["RTQModule", "cosine_epochs", "linear_warmup_cosine_lr", "param_groups"]

log = logging.getLogger(__name__)


def linear_warmup_cosine_lr(
    epoch: int, step: int, peak: float, warmup_start: float, warmup_steps: int, min_lr: float, max_epochs: int
) -> float:
    """LAVIS ``linear_warmup_cosine_lr`` (spec §3.3): in epoch 0, ``min(peak, start + (peak − start)·step/warmup)``
    (``step`` = iteration within the epoch); from epoch e ≥ 1, ``(peak − min)·½(1 + cos(π·e/E)) + min``."""
    if epoch == 0:
        if warmup_steps <= 0:
            return peak
        return min(peak, warmup_start + (peak - warmup_start) * step / warmup_steps)
    return (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / max_epochs)) + min_lr


def cosine_epochs(trainer: pl.Trainer) -> int:
    """E of :func:`linear_warmup_cosine_lr`: ``trainer.max_epochs``, or, when that is -1 (unbounded), the epochs
    that ``trainer.max_steps`` optimizer steps reach (⌈max_steps / ⌈batches / accumulate_grad_batches⌉⌉, the last
    one possibly cut short). With neither bound the schedule has no E: an error names both keys (taking E = 1, as
    before, would jump between the floor and the peak from epoch to epoch)."""
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    if max_epochs is not None and max_epochs > 0:
        return max_epochs
    n = trainer.num_training_batches
    if max_steps is None or max_steps < 0 or not 0 < n < float("inf"):
        raise ValueError(
            f"trainer.max_epochs={max_epochs} and trainer.max_steps={max_steps}: the cosine lr schedule (spec §3.3) "
            "decays over E epochs, so set trainer.max_epochs (the paper's settings are in the shipped configs), or "
            "trainer.max_steps with a training set of known length"
        )
    steps_per_epoch = math.ceil(n / trainer.accumulate_grad_batches)
    return max(1, math.ceil(max_steps / steps_per_epoch))


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups (spec §3.3): decay for trainable params with ndim ≥ 2 whose name has none of ``bias``, ``ln``,
    ``bn``; no decay otherwise; frozen params excluded."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bias" in name or "ln" in name or "bn" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class RTQModule(pl.LightningModule):
    """RTQ fine-tuning on one task.

    Args:
        config: the model (task, video encoder, text model, head settings); ``None`` = defaults.
        lr: peak learning rate (spec §3.3).
        warmup_lr: warm-up start lr.
        warmup_steps: linear warm-up iterations inside epoch 0.
        min_lr: cosine floor.
        weight_decay: AdamW decay of the decayed group.
        betas: AdamW betas.
        alpha: momentum-distillation weight α (retrieval ITC, multiple-choice).
        alpha_ramp_epochs: epochs over which α ramps up (2 for retrieval, 1 for multiple-choice).
        itc_weight, itm_weight: retrieval loss weights (1:1).
        label_smoothing: captioning / answer CE label smoothing.
        rerank: retrieval eval with ITM top-k re-ranking (False = cosine only).
        rank_ties: retrieval rank rule for tied scores: ``optimistic`` (spec §5: rank = items scored strictly
            higher, so a tie counts as a hit) or ``mean`` (expected rank / R@K over random orders of the tied items,
            what the official argsort evaluation gives on average); see :func:`rtqvl.metrics.retrieval_ranks`.
        caption_backend: ``auto`` | ``coco`` | ``python`` (see :mod:`rtqvl.metrics`).
        eval_token_store: where retrieval evaluation keeps the video token sequences for re-ranking (see
            :class:`rtqvl.token_store.VideoTokenStore`): ``pinned`` (host memory, page-locked with CUDA; only each
            re-ranking chunk's videos go to the device), ``cpu`` (plain host memory) or ``device`` (all on the
            accelerator). The scores are the same either way.
    """

    checkpoint_monitor = "val/score"
    checkpoint_mode = "max"

    def __init__(
        self,
        config: RTQConfig | None = None,
        lr: float = 2e-6,
        warmup_lr: float = 2e-7,
        warmup_steps: int = 500,
        min_lr: float = 0.0,
        weight_decay: float = 0.04,
        betas: tuple[float, float] = (0.9, 0.999),
        alpha: float = 0.4,
        alpha_ramp_epochs: float = 2.0,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        label_smoothing: float = 0.1,
        rerank: bool = True,
        caption_backend: CaptionBackend = "auto",
        rank_ties: TieRule = "optimistic",
        eval_token_store: StoreLocation = "pinned",
    ):
        super().__init__()
        # checked whatever the task: each is read only by its own task's metric, where a misspelt caption backend
        # would score with the python one
        check_choice("model.caption_backend", caption_backend, CAPTION_BACKENDS)
        check_choice("model.rank_ties", rank_ties, TIE_RULES)
        for key, value in (("lr", lr), ("warmup_lr", warmup_lr), ("min_lr", min_lr), ("weight_decay", weight_decay)):
            check_range(f"model.{key}", value, ge=0)
        check_range("model.warmup_steps", warmup_steps, integer=True)  # <= 0: no warm-up
        if len(betas) != 2:
            raise ValueError(f"model.betas={betas!r}: expected two moment rates")
        for i, beta in enumerate(betas):
            check_range(f"model.betas[{i}]", beta, ge=0, lt=1)
        check_range("model.alpha", alpha, ge=0, le=1)  # targets mix α·momentum scores and (1 − α)·ground truth
        check_range("model.alpha_ramp_epochs", alpha_ramp_epochs)  # <= 0: α from the first step
        check_range("model.itc_weight", itc_weight, ge=0)
        check_range("model.itm_weight", itm_weight, ge=0)
        check_range("model.label_smoothing", label_smoothing, ge=0, le=1)
        self.save_hyperparameters()
        self.config = config or RTQConfig()
        self.model = build_model(self.config)
        if self.config.pretrained_path:
            load_pretrained(self.model, self.config.pretrained_path)
        task = self.config.task
        if task == "retrieval":
            self.itc = ITCLoss()
            self.itm = ITMLoss()
            # every rank holds the whole gathered score matrix (_retrieval_epoch_end): no second sync in compute()
            self.val_metric = RetrievalMetrics(rank_ties, sync_on_compute=False)
            self.test_metric = RetrievalMetrics(rank_ties, sync_on_compute=False)
        elif task == "captioning":
            self.lm_loss = CaptionLoss(label_smoothing)
            self.val_metric, self.test_metric = CaptionMetrics(caption_backend), CaptionMetrics(caption_backend)
        elif task == "qa":
            self.lm_loss = AnswerLoss(label_smoothing)
            self.val_metric, self.test_metric = QAAccuracy(), QAAccuracy()
        else:
            self.mc_loss = MultipleChoiceLoss()
            self.val_metric, self.test_metric = NExTQAAccuracy(), NExTQAAccuracy()
        VideoTokenStore(eval_token_store)  # validates the choice
        # retrieval evaluation, per batch: {"videos": per-video tensors, "texts": per-caption tensors}
        self._eval_store: list[dict[str, dict[str, torch.Tensor]]] = []
        self._token_store: VideoTokenStore | None = None

    # ------------------------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        v = self.config.vision
        if dm is not None and hasattr(dm, "hparams"):
            for key, want in (("num_frames", v.num_frames), ("image_size", v.image_size)):
                got = dm.hparams.get(key)
                if got is not None and got != want:
                    raise ValueError(f"data.{key}={got} must equal model.config.vision.{key}={want}")
            batch_size = dm.hparams.get("batch_size")
            if stage == "fit" and self.config.task == "retrieval" and batch_size == 1:
                # each caption's hard-negative video for ITM is drawn from the other videos of its batch
                raise ValueError(
                    "data.batch_size=1: retrieval training (model.config.task=retrieval) draws each caption's ITM "
                    "negative video from the other videos of its batch; use data.batch_size >= 2"
                )

    def _alpha(self, batch_idx: int) -> float:
        n = self._trainer.num_training_batches if self._trainer is not None else 1
        n = int(n) if isinstance(n, int | float) and 0 < n < float("inf") else 1
        return alpha_ramp(self.hparams.alpha, self.current_epoch, batch_idx, n, self.hparams.alpha_ramp_epochs)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        hp = self.hparams
        lr = linear_warmup_cosine_lr(
            self.current_epoch,
            batch_idx,
            hp.lr,
            hp.warmup_lr,
            hp.warmup_steps,
            hp.min_lr,
            cosine_epochs(self.trainer),
        )
        for opt in self.trainer.optimizers:
            for g in opt.param_groups:
                g["lr"] = lr

    def _check_finite(self, loss: torch.Tensor, name: str) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name} is {loss.item()} at step {self.global_step}; lower the lr or check data")

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:  # every clip of the batch was skipped (on_corrupt: skip)
            return None
        task = self.config.task
        b = batch["video"].shape[0]
        if task == "retrieval":
            terms = self._retrieval_losses(batch, batch_idx)
        elif task == "captioning":
            ids, mask = self.model.tokenize(batch["caption"], self.device)
            terms = {"loss_lm": self.lm_loss(self.model(batch["video"], ids, mask), ids, mask)}
        elif task == "qa":
            q = self.model.tokenize_question(batch["question"], self.device)
            a = self.model.tokenize_answer(batch["answer"], self.device)
            logits = self.model(batch["video"], *q, *a)
            terms = {"loss_answer": self.lm_loss(logits, *a, batch["weight"].to(self.device))}
        else:
            terms = self._multiple_choice_losses(batch, batch_idx)
        loss = sum(terms.values())
        self._check_finite(loss, "train/loss")
        for k, v in terms.items():
            self.log(f"train/{k}", v, batch_size=b)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def _retrieval_losses(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        m = self.model
        with torch.no_grad():
            m.temp.clamp_(0.001, 0.5)  # spec §3.2a: clamp before every step
        video, idx = batch["video"], batch["video_index"].to(self.device)
        ids, mask = m.tokenize(batch["caption"], self.device)
        v_feat, v_tokens = m.encode_video(video)  # (B, E), (B, M, D)
        t_feat = m.encode_text(ids, mask)  # (B, E)
        alpha = self._alpha(batch_idx)
        with torch.no_grad():
            momentum_update(m.momentum_pairs(), self.config.momentum)
            v_m, _ = m.encode_video(video, momentum=True)
            t_m = m.encode_text(ids, mask, momentum=True)
        loss_itc, gathered = self.itc(
            v_feat, t_feat, v_m, t_m, idx, m.video_queue, m.text_queue, m.idx_queue, m.temp, alpha
        )
        m.enqueue(*gathered)
        neg_video, neg_text = itm_negative_indices(t_feat @ v_feat.T, idx, m.temp.detach())
        logits = torch.cat(
            [
                m.itm_logits(v_tokens, ids, mask),  # positives
                # index_select: a video drawn as the negative of several texts gets its gradients summed in a fixed
                # order (the backward of v_tokens[neg_video] sums them in a thread-dependent order on CPU)
                m.itm_logits(v_tokens.index_select(0, neg_video), ids, mask),  # each text with a hard negative video
                m.itm_logits(v_tokens, ids[neg_text], mask[neg_text]),  # each video with a hard negative text
            ]
        )  # (3B, 2)
        loss_itm = self.itm(logits)
        self.log("train/alpha", alpha, batch_size=video.shape[0])
        return {"loss_itc": self.hparams.itc_weight * loss_itc, "loss_itm": self.hparams.itm_weight * loss_itm}

    def _multiple_choice_losses(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        m = self.model
        texts = [c for cands in batch["candidates"] for c in cands]  # B·K strings, video-major
        ids, mask = m.tokenize(texts, self.device)
        logits = m(batch["video"], ids, mask)  # (B, K)
        alpha = self._alpha(batch_idx)
        with torch.no_grad():
            momentum_update(m.momentum_pairs(), self.config.momentum)
            logits_m = m(batch["video"], ids, mask, momentum=True)
        return {"loss_mc": self.mc_loss(logits, logits_m, batch["answer"].to(self.device), alpha)}

    # ------------------------------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict | None, stage: str) -> None:
        if batch is None:
            return
        task = self.config.task
        metric = self.val_metric if stage == "val" else self.test_metric
        m = self.model
        if task == "retrieval":
            # each video of the batch once, each of its captions once (see RetrievalDataset / collate)
            _check_retrieval_eval_batch(batch, stage)
            v_feat, v_tokens = m.encode_video(batch["video"])
            ids, mask = m.tokenize(batch["captions"], self.device, pad_to_max=True)
            if self._token_store is None:
                self._token_store = VideoTokenStore(self.hparams.eval_token_store)
            # the token sequences go to the store (host memory by default); only their rows travel with the rest
            rows = self._token_store.append(v_tokens) if self.hparams.rerank else torch.zeros(len(v_feat))
            video_index = batch["video_index"].to(self.device)
            self._eval_store.append(
                {
                    "videos": {
                        "v_feat": v_feat,
                        "row": rows.to(self.device, torch.long),
                        "rank": torch.full_like(rows, self.global_rank, dtype=torch.long, device=self.device),
                        "video_index": video_index,
                    },
                    "texts": {
                        "t_feat": m.encode_text(ids, mask),
                        "ids": ids,
                        "mask": mask,
                        "text_index": batch["text_index"].to(self.device),
                        "video_index": video_index[batch["caption_video"].to(self.device)],  # its positive video
                    },
                }
            )
        elif task == "captioning":
            metric.update(m.generate(batch["video"]), batch["references"], batch["index"].tolist())
        elif task == "qa":
            q = m.tokenize_question(batch["question"], self.device)
            metric.update(m.generate(batch["video"], *q), batch["answer"], batch["index"].tolist())
        else:
            texts = [c for cands in batch["candidates"] for c in cands]
            ids, mask = m.tokenize(texts, self.device)
            metric.update(
                m(batch["video"], ids, mask).argmax(dim=1),
                batch["answer"].to(self.device),
                batch["type"],
                batch["index"].tolist(),
            )

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _gather_store(self, stage: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Every rank's evaluation records → (videos sorted by video index, texts sorted by text index), each kept
        once: DistributedSampler's padding repeats a video (with its captions) on another rank, and the first
        gathered copy stays, so every rank picks the same owner for each video."""

        def cat(part: str) -> dict[str, torch.Tensor]:
            return {k: torch.cat([e[part][k] for e in self._eval_store]) for k in self._eval_store[0][part]}

        store = {part: cat(part) for part in ("videos", "texts")} if self._eval_store else None
        if self.trainer.world_size > 1:  # a rank without batches (all clips skipped) still joins the gather
            parts: list = [None] * self.trainer.world_size
            local = None if store is None else {p: {k: v.cpu() for k, v in d.items()} for p, d in store.items()}
            torch.distributed.all_gather_object(parts, local)
            parts = [p for p in parts if p is not None]
            store = (
                {
                    part: {k: torch.cat([p[part][k] for p in parts]).to(self.device) for k in parts[0][part]}
                    for part in ("videos", "texts")
                }
                if parts
                else None
            )
        if store is None:
            raise ValueError(f"{stage}: the evaluation set produced no batches")
        return _unique_by(store["videos"], "video_index"), _unique_by(store["texts"], "text_index")

    def _retrieval_epoch_end(self, stage: str) -> None:
        videos, texts = self._gather_store(stage)
        self._eval_store = []
        store, self._token_store = self._token_store, None
        # one column per video (by video index), one row per text (by text index); first[i] = text i's video column
        first = torch.searchsorted(videos["video_index"], texts["video_index"])
        sim = texts["t_feat"].float() @ videos["v_feat"].float().T  # (N_t, N_v) cosine
        if self.hparams.rerank:
            # each video's tokens stay on the rank that encoded it (the kept copy's rank); that rank scores the
            # ITM pairs of the video, fetching only each chunk's videos from its store; pair logits are summed
            world = self.trainer.world_size
            owner, row = videos["rank"], videos["row"]

            def fetch(cols: torch.Tensor) -> torch.Tensor:
                return store.fetch(row[cols], self.device)

            def reduce(x: torch.Tensor) -> torch.Tensor:
                torch.distributed.all_reduce(x)
                return x

            t2v, v2t = self.model.rerank(
                sim,
                fetch,
                texts["ids"],
                texts["mask"],
                self.config.k_test,
                owned=owner == self.global_rank,
                reduce=reduce if world > 1 else None,
            )
        else:
            t2v, v2t = sim, sim.T
        metric = self.val_metric if stage == "val" else self.test_metric
        metric.update(t2v, first, v2t)
        self._log_dict(metric.compute(), stage)
        metric.reset()

    def _log_dict(self, values: dict[str, float], stage: str) -> None:
        task = self.config.task
        if task == "retrieval":
            score = values["r_mean"]
        elif task == "captioning":
            score = values["CIDEr"] + values["BLEU-4"]  # official selection: CIDEr + BLEU-4
        else:
            score = values["acc"]
        # values come from data gathered over all ranks, so every rank logs the same number
        for k, v in values.items():
            self.log(f"{stage}/{k}", float(v), sync_dist=True)
        self.log(f"{stage}/score", float(score), sync_dist=True)

    def _epoch_end(self, stage: str) -> None:
        task = self.config.task
        if task == "retrieval":
            self._retrieval_epoch_end(stage)
            return
        metric = self.val_metric if stage == "val" else self.test_metric
        value = metric.compute()
        values = {"acc": float(value)} if task == "qa" else value
        self._log_dict(values, stage)
        metric.reset()

    def _reset_eval_store(self) -> None:
        # a fresh store per evaluation epoch (nothing left over from an interrupted one)
        self._eval_store = []
        self._token_store = None

    def on_validation_epoch_start(self) -> None:
        self._reset_eval_store()

    def on_test_epoch_start(self) -> None:
        self._reset_eval_store()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._reset_eval_store()
            self.val_metric.reset()
            return
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch: dict | None, batch_idx: int):
        """What :meth:`prediction_rows` and :meth:`prediction_arrays` turn into the predictions file: the batch's
        item ids with the captions / answers / chosen candidates, or for retrieval the L2-normalised video and text
        features (``video_feat``, ``text_feat``), one entry per caption: each video of the batch is encoded once and
        its feature repeated on the entries of its captions."""
        if batch is None:
            return None
        m, task = self.model, self.config.task
        if task == "retrieval":
            _check_retrieval_eval_batch(batch, "predict")
            owner = batch["caption_video"]  # (N_c,) batch position of each caption's video
            ids, mask = m.tokenize(batch["captions"], self.device)
            v_feat = m.encode_video(batch["video"])[0]
            return {
                "index": batch["text_index"],
                "video_id": [batch["video_id"][j] for j in owner.tolist()],
                "video_index": batch["video_index"][owner],
                "caption": batch["captions"],
                "video_feat": v_feat[owner.to(v_feat.device)],
                "text_feat": m.encode_text(ids, mask),
            }
        out = {"index": batch["index"], "video_id": batch["video_id"]}
        if task == "captioning":
            return {**out, "caption": m.generate(batch["video"])}
        if task == "qa":
            return {
                **out,
                "question_id": batch["question_id"],
                "question": batch["question"],
                "answer": m.generate(batch["video"], *m.tokenize_question(batch["question"], self.device)),
            }
        texts = [c for cands in batch["candidates"] for c in cands]
        ids, mask = m.tokenize(texts, self.device)
        scores = m(batch["video"], ids, mask)  # (B, K)
        return {
            **out,
            "qid": batch["qid"],
            "type": batch["type"],
            "candidates": batch["candidates"],
            "options": batch.get("options"),
            "scores": scores,
            "choice": scores.argmax(dim=1),
        }

    def prediction_rows(self, prediction: dict) -> list[dict]:
        """One JSON-serialisable dict per predicted item, in loader order. Every row has ``index`` (the item's
        position in the predict split's dataset; for retrieval, the caption's position among the split's captions)
        and ``video_id``; then, by ``config.task``:

        * ``retrieval`` (one row per caption, the captions of a video together, videos in loader order):
          ``video_index`` (the video's gallery index; rows of the same video share it) and ``caption`` (the
          normalised text that was encoded); the features are in :meth:`prediction_arrays`.
        * ``captioning`` (one row per video): ``caption``, the generated caption.
        * ``qa`` (one row per question): ``question_id`` (the annotation's), ``question`` (normalised) and
          ``answer``, the generated answer.
        * ``multiple_choice`` (one row per question): ``qid`` and ``type`` (the annotation's), ``choice`` (index of
          the highest-scoring candidate), ``candidate`` (that candidate's scored ``question: …? answer: …`` string)
          and ``answer_text`` (its answer as written in the annotation); the candidate scores are in
          :meth:`prediction_arrays`.
        """
        task = self.config.task
        n = len(prediction["video_id"])
        common = [
            {"index": i, "video_id": v}
            for i, v in zip(_plain(prediction["index"]), prediction["video_id"], strict=True)
        ]
        if task == "retrieval":
            extra = [
                {"video_index": vi, "caption": c}
                for vi, c in zip(_plain(prediction["video_index"]), prediction["caption"], strict=True)
            ]
        elif task == "captioning":
            extra = [{"caption": c} for c in prediction["caption"]]
        elif task == "qa":
            extra = [
                {"question_id": q, "question": text, "answer": a}
                for q, text, a in zip(
                    _plain(prediction["question_id"]), prediction["question"], prediction["answer"], strict=True
                )
            ]
        else:
            options = prediction["options"] or [None] * n
            extra = [
                {
                    "qid": q,
                    "type": t,
                    "choice": k,
                    "candidate": cands[k],
                    "answer_text": None if opts is None else opts[k],
                }
                for q, t, k, cands, opts in zip(
                    _plain(prediction["qid"]),
                    prediction["type"],
                    _plain(prediction["choice"]),
                    prediction["candidates"],
                    options,
                    strict=True,
                )
            ]
        return [{**a, **b} for a, b in zip(common, extra, strict=True)]

    def prediction_arrays(self, prediction: dict) -> dict[str, torch.Tensor]:
        """Row ``i`` of each tensor belongs to JSON row ``i``. ``retrieval``: ``video_feat`` (N, E) and ``text_feat``
        (N, E), the L2-normalised projections whose dot product is the cosine similarity before ITM re-ranking (the
        video feature is repeated on every caption row of its video). ``multiple_choice``: ``scores`` (N, K), the
        candidate logits. Captioning and QA: none."""
        task = self.config.task
        if task == "retrieval":
            return {"video_feat": prediction["video_feat"].float(), "text_feat": prediction["text_feat"].float()}
        if task == "multiple_choice":
            return {"scores": prediction["scores"].float()}
        return {}

    # ------------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        hp = self.hparams
        return torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))


_RETRIEVAL_EVAL_KEYS = ("video", "video_id", "video_index", "captions", "text_index", "caption_video")


def _check_retrieval_eval_batch(batch: dict, stage: str) -> None:
    """Retrieval evaluation and prediction read one item per video with all of its captions; a batch of training
    items (one ``caption`` each) would otherwise fail on a bare key lookup."""
    missing = [k for k in _RETRIEVAL_EVAL_KEYS if k not in batch]
    if missing:
        raise KeyError(
            f"rtqvl {stage}: a retrieval batch lacks {missing}; evaluation and prediction need one item per video "
            "with all its captions, as RetrievalDataset(train=False) gives and rtqvl.data.collate batches them "
            f"(batch keys: {sorted(batch)})"
        )


def _unique_by(records: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    """``records`` sorted by ``records[key]``, keeping the first copy of each key value."""
    rows = first_of_each_id(records[key])
    return {k: v[rows] for k, v in records.items()}


def _plain(values) -> list:
    """A tensor of ids or indices as a list of Python numbers; a list (string ids) as it is."""
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(RTQModule)
