"""The LightningModule: batch → SHE-Net features → symmetric InfoNCE (training); features of the whole split →
chunked text × video similarity → retrieval metrics (validation/test)."""

from __future__ import annotations

from dataclasses import fields
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_choice, check_range
from mmzoo.distributed import gather_uneven_rows, rank_and_world
from mmzoo.metrics import first_of_each_id

from shenet.losses import SHENetContrastiveLoss
from shenet.metrics import RetrievalMetrics
from shenet.models import SHENet, SHENetConfig, TextFeatures, VideoFeatures
from shenet.optim import BertAdam, param_groups, warmup_cosine

__all__ = ["SHENetModule", "evaluation_memory"]

EvalFeatureDtype = Literal["float16", "bfloat16", "float32"]
"""Dtypes of the stored evaluation features (``model.eval_feature_dtype``)."""


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
        eval_feature_dtype: EvalFeatureDtype = "float16",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.config = config or SHENetConfig()
        check_choice("model.eval_feature_dtype", eval_feature_dtype, get_args(EvalFeatureDtype))
        check_range("model.lr", lr, ge=0)
        check_range("model.coef_lr", coef_lr, ge=0)
        check_range("model.weight_decay", weight_decay, ge=0)  # BertAdam applies decay only when > 0
        check_range("model.warmup_proportion", warmup_proportion, ge=0, le=1)
        if len(betas) != 2:
            raise ValueError(f"model.betas={betas!r}: expected two moment rates")
        for i, beta in enumerate(betas):
            check_range(f"model.betas[{i}]", beta, ge=0, lt=1)
        check_range("model.eps", eps, gt=0)
        check_range("model.max_grad_norm", max_grad_norm)  # any number: <= 0 turns clipping off
        check_range("model.eval_text_chunk", eval_text_chunk, ge=1, integer=True)
        check_range("model.eval_video_chunk", eval_video_chunk, ge=1, integer=True)
        self.model = SHENet(self.config)
        self.loss = SHENetContrastiveLoss(aux_weight)
        # every rank assembles the whole score matrix (see _score_matrix), so the metrics never sync across ranks
        self.val_metrics = RetrievalMetrics(sync_on_compute=False)
        self.test_metrics = RetrievalMetrics(sync_on_compute=False)
        self._eval: dict[str, list] = {}

    def setup(self, stage: str) -> None:
        """Compare the data module's text and frame lengths with what the model can take, before any batch."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        hp = getattr(datamodule, "hparams", None)
        if hp is not None:
            self.check_data(hp.get("max_words"), hp.get("max_frames"), hp.get("dataset"))

    def check_data(self, max_words: int | None, max_frames: int | None = None, dataset: str | None = None) -> None:
        """Refuse ``data.max_words`` longer than CLIP's text context and, with the seqTransf head, ``data.max_frames``
        beyond its frame positions: both would otherwise stop the run at the first text or video batch."""
        context = int(self.model.clip.positional_embedding.shape[0])
        if max_words is not None and max_words > context:
            if self.config.clip_model == "custom":
                limit = f"model.config.custom_context_length={context}"
            else:
                limit = f"the text context of model.config.clip_model={self.config.clip_model!r} ({context} tokens)"
            raise ValueError(
                f"data.max_words={max_words} exceeds {limit}: lower data.max_words or raise the context length"
            )
        frames_apply = dataset != "digits"  # the digits task has its own 4 frames
        if frames_apply and max_frames is not None and self.config.temporal == "seqTransf":
            if max_frames > self.config.max_frames:
                raise ValueError(
                    f"data.max_frames={max_frames} exceeds model.config.max_frames={self.config.max_frames} "
                    "(frame positions of the seqTransf head): raise model.config.max_frames or lower data.max_frames"
                )

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

    def _score_matrix(self):
        """The (texts × videos) score matrix of the whole split on every rank, in dataset order (texts by id,
        videos by index), each text and video once, with each text's ground-truth column and its id.

        Video features never leave their rank. The text features (small: sentence and node vectors) are gathered to
        every rank; each rank scores all texts against the videos it holds, and only those score columns are
        gathered. Repeats (DistributedSampler pads the last round with items of other ranks) are dropped: a text
        by its id, a video by its index, which only the lowest rank holding it scores."""
        local = {k: (_cat(v) if k in ("text", "video") else torch.cat(v)) for k, v in self._eval.items()}
        self._eval = {}
        rank, world = rank_and_world()
        names = [f.name for f in fields(TextFeatures)]
        text: TextFeatures = local["text"]
        parts, _ = gather_uneven_rows(
            [getattr(text, n) for n in names] + [local["text_ids"], local["text_video"]], self.device
        )
        text_ids, text_video = parts[-2].cpu(), parts[-1].cpu()
        pick = first_of_each_id(text_ids)
        text = TextFeatures(**{n: x.cpu()[pick] for n, x in zip(names, parts[: len(names)], strict=True)})
        text_ids, text_video = text_ids[pick], text_video[pick]

        held = local["video_index"]  # (n_local,) dataset indices of this rank's videos
        (everyone,), counts = gather_uneven_rows([held], self.device)
        everyone = everyone.cpu()
        first = torch.zeros(len(everyone), dtype=torch.bool)  # first occurrence over the ranks, in rank order
        first[first_of_each_id(everyone)] = True
        start = sum(counts[:rank])
        mine = first[start : start + len(held)]
        video: VideoFeatures = local["video"].apply(lambda x: x[mine])
        scores = self.model.similarity_matrix(
            text,
            video,
            self.hparams.eval_text_chunk,
            self.hparams.eval_video_chunk,
            device=self.device,
            progress=rank == 0,
        )  # (N_text, n_own) float32 on the CPU
        (columns, video_ids), _ = gather_uneven_rows(
            [scores.T.contiguous(), held[mine]], self.device
        )  # (N_video, N_text), (N_video,)
        v_order = torch.argsort(video_ids.cpu())
        video_ids = video_ids.cpu()[v_order]
        if bool((video_ids[1:] == video_ids[:-1]).any()):
            raise RuntimeError("evaluation: a video was scored by two ranks")
        scores = columns[v_order.to(columns.device)].T  # (N_text, N_video) in dataset order
        # the gallery is the sorted video indices; map each text's video index to its gallery position
        position = torch.full((int(video_ids.max()) + 1,), -1, dtype=torch.long)
        position[video_ids] = torch.arange(len(video_ids))
        query_gt = position[text_video.clamp_max(len(position) - 1)]
        if bool((text_video >= len(position)).any() or (query_gt < 0).any()):
            raise RuntimeError("evaluation: a text's video is missing from the gathered gallery")
        return scores, query_gt, text_ids

    def _eval_epoch_end(self, stage: str, metric: RetrievalMetrics) -> None:
        if not self._eval:
            return
        scores, query_gt, text_ids = self._score_matrix()
        # every rank holds the whole matrix, so the metric computes without a cross-rank sync (sync_on_compute is
        # off); its inputs still go to this module's device, where the evaluation runs
        metric.update(scores.to(self.device), query_gt.to(self.device), text_ids.to(self.device))
        results = metric.compute()
        metric.reset()
        for name, value in results.items():  # equal on every rank: "max" keeps the value exact
            self.log(f"{stage}/{name}", value.to(self.device), sync_dist=True, reduce_fx="max")
        rank_zero_info(
            f"{stage}: {scores.shape[0]} queries x {scores.shape[1]} videos: "
            + ", ".join(f"{k}={float(v):.2f}" for k, v in results.items())
        )

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Sentence and video embeddings of a batch, with the ids that :meth:`prediction_rows` writes. Only the
        sentence-video level: the pair-dependent syntax-guided score needs the node, frame and patch features of
        every pair (see ``test``)."""
        text = self.model.encode_text(batch)
        video = self.model.encode_video(batch["video"], batch["video_mask"])
        return {
            "text_ids": batch["text_ids"],
            "captions": batch.get("captions"),
            "caption_video": batch["caption_video"],
            "video_index": batch["video_index"],
            "video_id": batch.get("video_id"),
            "unreadable": batch.get("unreadable"),
            "sentence": text.sentence,
            "video": video.video,
        }

    def prediction_rows(self, prediction: dict) -> list[dict]:
        """One row per query text of the batch (a video with several captions, as in MSVD, gives several rows):

        * ``text_id``: the query's index in the split's evaluation order (the row of ``test``'s score matrix);
        * ``caption``: the query text as the annotation writes it;
        * ``video_index``: its video's index in the split's gallery (the column of ``test``'s score matrix);
        * ``video_id``: that video's annotation id (absent for the in-memory digits task, which has none);
        * ``unreadable``: true when the video could not be decoded (``data.on_corrupt: skip``): it was fed as an
          all-padding video and its embedding is the zero vector (absent for the digits task).

        The embeddings are in :meth:`prediction_arrays`."""
        owner = prediction["caption_video"].tolist()
        video_index = prediction["video_index"].tolist()
        captions = prediction["captions"] or [None] * len(owner)
        rows = []
        for text_id, b, caption in zip(prediction["text_ids"].tolist(), owner, captions, strict=True):
            row = {"text_id": text_id, "caption": caption, "video_index": video_index[b]}
            if prediction["video_id"] is not None:
                row["video_id"] = prediction["video_id"][b]
            if prediction.get("unreadable") is not None:
                row["unreadable"] = bool(prediction["unreadable"][b])
            rows.append(row)
        return rows

    def prediction_arrays(self, prediction: dict) -> dict[str, torch.Tensor]:
        """``sentence`` (N, D): the L2-normalised sentence embedding of row ``i``'s text; ``video`` (N, D): the
        L2-normalised video embedding (masked mean of the frame features) of its video, repeated on every row of
        that video. Their dot product is the sentence-video level S1 of SHE-Net's similarity (without
        ``sentence_guidance``), not the aggregated score S, which also needs the verb/noun node and frame/patch
        features of each pair."""
        return {
            "sentence": prediction["sentence"].float(),
            "video": prediction["video"][prediction["caption_video"]].float(),
        }


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(SHENetModule)


def evaluation_memory(
    num_texts: int,
    num_videos: int,
    world: int,
    frames: int,
    patches: int,
    dim: int = 512,
    verbs: int = 4,
    nouns: int = 8,
    feature_bytes: int = 2,
) -> dict[str, int]:
    """Bytes of evaluation features and scores one of ``world`` ranks holds at the end of an epoch, by part:

        videos  = ⌈N_v/W⌉ · (b·D·(1 + T + T·P) + T + 8)    this rank's videos (video, frame and patch features; frame
                                                           mask, index); DistributedSampler gives each rank ⌈N_v/W⌉
        texts   = N_t · (b·D·(1 + 2V + 2M) + V + 9M + 16)  every text, gathered (sentence, raw and enhanced verb and
                                                           noun nodes; node masks, noun parents, id, video index)
        scores  = N_t · N_v · 4                            the assembled float32 score matrix

    with b = ``feature_bytes`` (``eval_feature_dtype``: 2 for float16), D = ``dim``, T = ``frames``, P = ``patches``
    per frame, V / M = verb / noun slots (``data.parser`` caps). ``total`` is their sum; ``all_videos`` is the
    videos term for the whole gallery (N_v videos), which every rank held when evaluation gathered all features.
    The gathers also need transient buffers on the device of about the texts and the scores terms.
    """
    per_video = feature_bytes * dim * (1 + frames + frames * patches) + frames + 8
    per_text = feature_bytes * dim * (1 + 2 * verbs + 2 * nouns) + verbs + 9 * nouns + 16
    out = {
        "videos": -(-num_videos // world) * per_video,
        "texts": num_texts * per_text,
        "scores": num_texts * num_videos * 4,
    }
    out["total"] = sum(out.values())
    out["all_videos"] = num_videos * per_video
    return out
