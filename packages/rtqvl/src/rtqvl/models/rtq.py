"""RTQ task models: the video encoder (R, T) plus BLIP's query heads (Q) for each task (spec §3.2).

* :class:`RTQRetrieval`: ITC projections, momentum encoders and queues, ITM head, top-k re-ranking (§3.2a).
* :class:`RTQCaptioner`: text decoder over the video tokens, beam search (§3.2b).
* :class:`RTQVideoQA`: question encoder + answer decoder, beam search (§3.2c).
* :class:`RTQMultipleChoice`: text encoder over "question: … answer: …", MLP classifier, momentum copy (§3.2d).

Models return tensors; losses live in :mod:`rtqvl.losses` and the LightningModule combines them.
Parameter names follow LAVIS' BLIP where transformers keeps them (``text_encoder.*``, ``text_decoder.*``,
``vision_proj``, ``text_proj``, ``itm_head``, ``temp``, ``*_m``); the ViT uses transformers' names and
:func:`rtqvl.models.weights.load_pretrained` maps LAVIS' ViT keys onto them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from mmzoo.config import check_literal_fields, check_range
from torch import nn
from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel, BlipTextModel

from rtqvl.models.text import TextConfig, blip_text_config, build_tokenizer
from rtqvl.models.video import RTQVisionEncoder, VisionConfig

__all__ = [
    "RTQConfig",
    "RTQRetrieval",
    "RTQCaptioner",
    "RTQVideoQA",
    "RTQMultipleChoice",
    "build_model",
    "momentum_update",
]

Task = Literal["retrieval", "captioning", "qa", "multiple_choice"]


TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128, num_frames=4,
                   num_segments=2, cluster_block=2, temporal_block=3)  # fmt: skip
"""The tiny video encoder of ``tiny.yaml`` and ``demo.yaml`` (spec §8a: random init, CPU): 16 patches a frame, 4
frames in 2 segments, the same Refine/Temporal/Query code paths as ViT-B/16. Tests, the repro and the benchmark's
CPU case build on it (``VisionConfig(**TINY_VISION)``; ``tests/test_configs.py`` checks the YAML files match)."""
TINY_TEXT = dict(vocab_path="tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
"""The tiny MED text model of ``tiny.yaml`` and ``demo.yaml``, with the shipped ~220-word vocabulary."""


@dataclass
class RTQConfig:
    """The whole RTQ model: video encoder, MED text model and the task head settings (spec §3)."""

    task: Task = "retrieval"
    """Which query head: ``retrieval`` (ITC+ITM), ``captioning``, ``qa`` (open-ended), ``multiple_choice``."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    """Video encoder (ViT-B/16 + Refine + Temporal)."""
    text: TextConfig = field(default_factory=TextConfig)
    """BERT MED and tokenizer."""
    pretrained_path: str | None = None
    """BLIP checkpoint: LAVIS ``model_base_capfilt_large.pth`` (the paper's; spec §3.0) or a local transformers BLIP
    folder; ``None`` = random init (tests, demos)."""
    embed_dim: int = 256
    """ITC projection size."""
    queue_size: int = 14400
    """ITC feature queue length (at least the global batch; written circularly, so any batch size ≤ it works)."""
    momentum: float = 0.995
    """EMA factor of the momentum encoders."""
    temp_init: float = 0.07
    """Initial ITC temperature (a checkpoint's ``temp`` overrides it)."""
    k_test: int = 128
    """Re-ranking: ITM on the top-k candidates per query."""
    max_text_len: int = 35
    """Max tokens of retrieval captions / QA questions."""
    max_caption_len: int = 40
    """Max tokens of training captions / multiple-choice strings."""
    num_beams: int = 3
    """Beam width of captioning / QA generation."""
    gen_max_len: int = 32
    """Max generated length (captioning 32, QA 5)."""
    gen_min_len: int = 5
    """Min generated length (captioning 5, QA 1)."""
    repetition_penalty: float = 1.0
    """Generation repetition penalty."""
    tune_crossattn_only: bool = True
    """Captioning / QA: train only the decoder's cross-attention (the video encoder is always trained)."""
    num_choices: int = 5
    """Multiple-choice candidates (NExT-QA: 5)."""
    init_std: float | None = None
    """Random-init miniatures only: redraw every Linear / Embedding weight (trunc-normal, this std; the packed
    query/key/value weight of the temporal modules' attention included) before training.
    ``None`` = the official init (trunc-normal 0.02, meant to be overwritten by the BLIP checkpoint). At width 64
    the 0.02 init makes the tiny encoders' [CLS] outputs identical for every input (cosine ≈ 1), so momentum ITC
    has no gradient to start from; ``repro.py`` uses 0.2 (README, Repro results)."""

    def __post_init__(self) -> None:
        check_literal_fields(self, "model.config")  # task: checked again by build_model
        check_range("model.config.k_test", self.k_test, ge=1, integer=True)
        check_range("model.config.queue_size", self.queue_size, ge=1, integer=True)
        check_range("model.config.momentum", self.momentum, ge=0, le=1)
        if self.init_std is not None:  # null: the official init
            check_range("model.config.init_std", self.init_std, gt=0)
        check_range("model.config.embed_dim", self.embed_dim, ge=1, integer=True)
        check_range("model.config.temp_init", self.temp_init, gt=0)  # the ITC similarities are divided by it
        for key in ("max_text_len", "max_caption_len"):
            check_range(f"model.config.{key}", getattr(self, key), ge=3, integer=True)  # [CLS], a token, [SEP]
            if getattr(self, key) > self.text.max_position_embeddings:
                raise ValueError(
                    f"model.config.{key}={getattr(self, key)} exceeds "
                    f"model.config.text.max_position_embeddings={self.text.max_position_embeddings}"
                )
        check_range("model.config.num_beams", self.num_beams, ge=1, integer=True)
        check_range("model.config.gen_max_len", self.gen_max_len, ge=1, integer=True)
        check_range("model.config.gen_min_len", self.gen_min_len, ge=0, integer=True)
        if self.gen_min_len > self.gen_max_len:
            raise ValueError(
                f"model.config.gen_min_len={self.gen_min_len} must be <= model.config.gen_max_len={self.gen_max_len}"
            )
        check_range("model.config.repetition_penalty", self.repetition_penalty, gt=0)
        check_range("model.config.num_choices", self.num_choices, ge=1, integer=True)


@torch.no_grad()
def momentum_update(pairs: list[tuple[nn.Module, nn.Module]], m: float) -> None:
    """EMA of the momentum models: θ_m ← m·θ_m + (1 − m)·θ (spec §3.2a)."""
    for online, ema in pairs:
        for p, p_m in zip(online.parameters(), ema.parameters(), strict=True):
            p_m.mul_(m).add_(p.detach(), alpha=1.0 - m)


def _frozen_copy(module: nn.Module) -> nn.Module:
    ema = copy.deepcopy(module)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def _memory_mask(tokens: torch.Tensor) -> torch.Tensor:
    return torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)  # all-ones memory mask


class _TextInputs:
    """Tokenisation shared by the heads (padding, truncation, first-token replacement)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str], max_len: int, first_token: int | None, device, pad_to_max: bool = False):
        tok = self.tokenizer(
            list(texts),
            padding="max_length" if pad_to_max else "longest",
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        ids = tok["input_ids"].to(device)
        if first_token is not None:
            ids = ids.clone()
            ids[:, 0] = first_token  # [ENC] / [DEC] replaces [CLS]
        return ids, tok["attention_mask"].to(device)


class _RTQBase(nn.Module):
    def __init__(self, config: RTQConfig):
        super().__init__()
        self.config = config
        self.tokenizer = build_tokenizer(config.text.vocab_path)
        self.text_inputs = _TextInputs(self.tokenizer)
        self.visual_encoder = RTQVisionEncoder(config.vision)
        self.text_cfg = blip_text_config(config.text, self.tokenizer, config.vision.hidden_size)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs updated by EMA; empty for heads without momentum distillation."""
        return []


class RTQRetrieval(_RTQBase):
    """Text-video retrieval head (spec §3.2a): ITC with momentum distillation and queues, ITM, re-ranking."""

    def __init__(self, config: RTQConfig):
        super().__init__(config)
        d_v, d_t, e = config.vision.hidden_size, config.text.hidden_size, config.embed_dim
        self.text_encoder = BlipTextModel(self.text_cfg, add_pooling_layer=False)
        self.vision_proj = nn.Linear(d_v, e)
        self.text_proj = nn.Linear(d_t, e)
        self.itm_head = nn.Linear(d_t, 2)
        self.temp = nn.Parameter(torch.tensor(config.temp_init))
        self.visual_encoder_m = _frozen_copy(self.visual_encoder)
        self.text_encoder_m = _frozen_copy(self.text_encoder)
        self.vision_proj_m = _frozen_copy(self.vision_proj)
        self.text_proj_m = _frozen_copy(self.text_proj)
        q = config.queue_size
        self.register_buffer("video_queue", F.normalize(torch.randn(e, q), dim=0))  # random unit vectors
        self.register_buffer("text_queue", F.normalize(torch.randn(e, q), dim=0))
        self.register_buffer("idx_queue", torch.full((1, q), -100, dtype=torch.long))  # index −100 = no match
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def momentum_pairs(self):
        return [
            (self.visual_encoder, self.visual_encoder_m),
            (self.text_encoder, self.text_encoder_m),
            (self.vision_proj, self.vision_proj_m),
            (self.text_proj, self.text_proj_m),
        ]

    def tokenize(self, texts: list[str], device, pad_to_max: bool = False):
        """Caption ids ``[CLS] … [SEP]`` and mask (B, L) (``itm_logits`` swaps the first token for ``[ENC]``)."""
        return self.text_inputs(texts, self.config.max_text_len, None, device, pad_to_max)

    def encode_video(self, video: torch.Tensor, momentum: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, T, 3, H, W) → (L2-normalised feature (B, E), tokens (B, M, D))."""
        enc, proj = (self.visual_encoder_m, self.vision_proj_m) if momentum else (self.visual_encoder, self.vision_proj)
        out = enc(video)
        return F.normalize(proj(out.global_feat), dim=-1), out.tokens

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """Text-only encoder → L2-normalised ``text_proj`` of the first token (B, E)."""
        enc, proj = (self.text_encoder_m, self.text_proj_m) if momentum else (self.text_encoder, self.text_proj)
        h = enc(input_ids=ids, attention_mask=mask, is_decoder=False).last_hidden_state  # (B, L, D)
        return F.normalize(proj(h[:, 0]), dim=-1)

    def itm_logits(self, video_tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Multimodal text encoder (first token ``[ENC]``) with cross-attention to video tokens → ITM logits (B, 2)."""
        ids = ids.clone()
        ids[:, 0] = self.tokenizer.enc_token_id
        h = self.text_encoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=video_tokens,
            encoder_attention_mask=_memory_mask(video_tokens),
            is_decoder=False,
        ).last_hidden_state  # (B, L, D)
        return self.itm_head(h[:, 0])  # (B, 2)

    @torch.no_grad()
    def enqueue(self, video_feat_m: torch.Tensor, text_feat_m: torch.Tensor, idx: torch.Tensor) -> None:
        """FIFO update with the (all-gathered) momentum features (E) and video indices (spec §3.2a).

        The n columns of the global batch go to slots ``ptr, ptr + 1, …`` modulo K = ``queue_size``: a batch that
        crosses the end of the queue is split there and continues at slot 0; then ``ptr ← (ptr + n) mod K``.
        Deviation: the official code requires K to be a multiple of the global batch and writes ``[ptr, ptr + n)``;
        for such a batch (and the pointers it leaves) both write the same slots. Here any pointer (one a checkpoint
        saved with another global batch size) and any n ≤ K work.

        video_feat_m, text_feat_m (n, E); idx (n,).
        """
        n = video_feat_m.shape[0]
        q = self.video_queue.shape[1]
        if n > q:
            raise ValueError(
                f"a global batch of {n} (batch × devices) is larger than model.config.queue_size={q}: the queue must hold at "
                "least one global batch; raise model.config.queue_size or lower the batch size"
            )
        ptr = int(self.queue_ptr)
        if not 0 <= ptr < q:
            raise ValueError(f"queue_ptr={ptr} is outside the queue of model.config.queue_size={q} slots")
        first = min(n, q - ptr)  # columns that fit before the end of the queue; the other n − first wrap to slot 0
        for queue, cols in (
            (self.video_queue, video_feat_m.T),
            (self.text_queue, text_feat_m.T),
            (self.idx_queue, idx.view(1, -1)),
        ):
            queue[:, ptr : ptr + first] = cols[:, :first]  # (E or 1, first)
            queue[:, : n - first] = cols[:, first:]  # (E or 1, n − first)
        self.queue_ptr[0] = (ptr + n) % q

    @torch.no_grad()
    def rerank(
        self,
        sim: torch.Tensor,
        video_tokens: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        k: int,
        chunk: int = 128,
        owned: torch.Tensor | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ITM re-ranking (spec §3.2a, inference): score = ITM_logit[:, 1] + cosine inside each query's top-k,
        −100 elsewhere.

        sim (N_t, N_v) cosine; text_ids / text_mask (N_t, L). ``video_tokens``: the (N_v, M, D) token sequences
        (any device), or a function mapping video columns (n,) to their (n, M, D) tokens on ``sim``'s device (a
        store kept off the accelerator). Each distinct (text, video) pair among both directions' top-k is scored
        once, in chunks of ``chunk`` pairs grouped by video, so a chunk needs the tokens of only a few videos.
        Distributed: ``owned`` (N_v,) bool marks the videos whose pairs this process scores (the others' logits
        stay 0) and ``reduce`` sums the pair logits over processes (an all-reduce); every video must be owned by
        exactly one process. Returns (t2v scores (N_t, N_v), v2t scores (N_v, N_t)).
        """
        n_t, n_v = sim.shape
        k_v, k_t = min(k, n_v), min(k, n_t)
        dev = sim.device
        if callable(video_tokens):
            fetch = video_tokens
        else:
            tokens = video_tokens

            def fetch(cols: torch.Tensor) -> torch.Tensor:
                return tokens[cols.to(tokens.device)].to(dev)

        # candidate pairs: text → its top-k videos, then video → its top-k texts
        t2v_t = torch.arange(n_t, device=dev).repeat_interleave(k_v)
        t2v_v = sim.topk(k_v, dim=1).indices.reshape(-1)
        v2t_v = torch.arange(n_v, device=dev).repeat_interleave(k_t)
        v2t_t = sim.T.topk(k_t, dim=1).indices.reshape(-1)
        key = torch.cat([t2v_v * n_t + t2v_t, v2t_v * n_t + v2t_t])  # sorted by key = grouped by video
        pairs, where = torch.unique(key, return_inverse=True)
        pair_v, pair_t = pairs // n_t, pairs % n_t
        logits = sim.new_zeros(pairs.numel())
        todo = torch.arange(pairs.numel(), device=dev) if owned is None else owned.to(dev)[pair_v].nonzero().view(-1)
        for s in range(0, todo.numel(), chunk):
            sel = todo[s : s + chunk]
            cols, pos = torch.unique_consecutive(pair_v[sel], return_inverse=True)
            t = pair_t[sel]
            logits[sel] = self.itm_logits(fetch(cols)[pos], text_ids[t], text_mask[t])[:, 1].float()
        if reduce is not None:
            logits = reduce(logits)
        score = logits[where] + sim[torch.cat([t2v_t, v2t_t]), torch.cat([t2v_v, v2t_v])]
        t2v, v2t = sim.new_full((n_t, n_v), -100.0), sim.new_full((n_v, n_t), -100.0)
        t2v[t2v_t, t2v_v] = score[: t2v_t.numel()]
        v2t[v2t_v, v2t_t] = score[t2v_t.numel() :]
        return t2v, v2t


def _freeze_all_but_crossattention(decoder: nn.Module) -> None:
    for name, p in decoder.named_parameters():
        p.requires_grad_("crossattention" in name)


def _generate(decoder: BlipTextLMHeadModel, memory: torch.Tensor, memory_mask: torch.Tensor, cfg: RTQConfig, tok):
    """Beam search from ``[DEC]`` with cross-attention to ``memory`` (B, M, D) → list of B strings."""
    b = memory.shape[0]
    bos = torch.full((b, 1), tok.bos_token_id, dtype=torch.long, device=memory.device)
    out = decoder.generate(
        input_ids=bos,
        attention_mask=torch.ones_like(bos),
        encoder_hidden_states=memory,
        encoder_attention_mask=memory_mask,
        num_beams=cfg.num_beams,
        max_length=cfg.gen_max_len,
        min_length=cfg.gen_min_len,
        repetition_penalty=cfg.repetition_penalty,
        do_sample=False,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )  # (B, ≤ max_len)
    return [s.strip() for s in tok.batch_decode(out[:, 1:], skip_special_tokens=True)]


class RTQCaptioner(_RTQBase):
    """Video captioning head (spec §3.2b): BLIP text decoder cross-attending to the video tokens."""

    def __init__(self, config: RTQConfig):
        super().__init__(config)
        self.text_decoder = BlipTextLMHeadModel(self.text_cfg)
        if config.tune_crossattn_only:
            _freeze_all_but_crossattention(self.text_decoder)

    def tokenize(self, captions: list[str], device):
        """``[DEC] caption [SEP]`` ids and mask (B, L), padded to the longest, ≤ ``max_caption_len``."""
        return self.text_inputs(captions, self.config.max_caption_len, self.tokenizer.bos_token_id, device)

    def forward(self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, L, V) of the caption given the video (B, T, 3, H, W)."""
        tokens = self.visual_encoder(video).tokens  # (B, M, D)
        return self.text_decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=tokens,
            encoder_attention_mask=_memory_mask(tokens),
            is_decoder=True,
        ).logits  # (B, L, V)

    @torch.no_grad()
    def generate(self, video: torch.Tensor) -> list[str]:
        tokens = self.visual_encoder(video).tokens
        return _generate(self.text_decoder, tokens, _memory_mask(tokens), self.config, self.tokenizer)


class RTQVideoQA(_RTQBase):
    """Open-ended VideoQA head (spec §3.2c): question encoder over the video, answer decoder over the question."""

    def __init__(self, config: RTQConfig):
        super().__init__(config)
        self.text_encoder = BlipTextModel(self.text_cfg, add_pooling_layer=False)
        self.text_decoder = BlipTextLMHeadModel(self.text_cfg)
        if config.tune_crossattn_only:
            _freeze_all_but_crossattention(self.text_decoder)

    def tokenize_question(self, questions: list[str], device):
        return self.text_inputs(questions, self.config.max_text_len, self.tokenizer.enc_token_id, device)

    def tokenize_answer(self, answers: list[str], device):
        return self.text_inputs(answers, self.config.max_text_len, self.tokenizer.bos_token_id, device)

    def encode_question(self, video: torch.Tensor, q_ids: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.visual_encoder(video).tokens  # (B, M, D)
        return self.text_encoder(
            input_ids=q_ids,
            attention_mask=q_mask,
            encoder_hidden_states=tokens,
            encoder_attention_mask=_memory_mask(tokens),
            is_decoder=False,
        ).last_hidden_state  # (B, Lq, D)

    def forward(self, video, q_ids, q_mask, a_ids, a_mask) -> torch.Tensor:
        """Answer next-token logits (B, La, V)."""
        q_states = self.encode_question(video, q_ids, q_mask)
        return self.text_decoder(
            input_ids=a_ids,
            attention_mask=a_mask,
            encoder_hidden_states=q_states,
            encoder_attention_mask=q_mask,
            is_decoder=True,
        ).logits

    @torch.no_grad()
    def generate(self, video, q_ids, q_mask) -> list[str]:
        q_states = self.encode_question(video, q_ids, q_mask)
        return _generate(self.text_decoder, q_states, q_mask, self.config, self.tokenizer)


class RTQMultipleChoice(_RTQBase):
    """Multiple-choice QA head (spec §3.2d): 5 "question: … answer: …" strings scored by an MLP on [CLS]."""

    def __init__(self, config: RTQConfig):
        super().__init__(config)
        d = config.text.hidden_size
        self.text_encoder = BlipTextModel(self.text_cfg, add_pooling_layer=False)
        self.cls_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        self.visual_encoder_m = _frozen_copy(self.visual_encoder)
        self.text_encoder_m = _frozen_copy(self.text_encoder)
        self.cls_head_m = _frozen_copy(self.cls_head)

    def momentum_pairs(self):
        return [
            (self.visual_encoder, self.visual_encoder_m),
            (self.text_encoder, self.text_encoder_m),
            (self.cls_head, self.cls_head_m),
        ]

    def tokenize(self, texts: list[str], device):
        """B·K candidate strings (first token kept as [CLS]) → ids, mask (B·K, L)."""
        return self.text_inputs(texts, self.config.max_caption_len, None, device)

    def forward(self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, momentum: bool = False):
        """video (B, T, 3, H, W), ids/mask (B·K, L) → logits (B, K)."""
        venc, tenc, head = (
            (self.visual_encoder_m, self.text_encoder_m, self.cls_head_m)
            if momentum
            else (self.visual_encoder, self.text_encoder, self.cls_head)
        )
        b = video.shape[0]
        k = ids.shape[0] // b
        tokens = venc(video).tokens.repeat_interleave(k, dim=0)  # (B·K, M, D)
        h = tenc(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=tokens,
            encoder_attention_mask=_memory_mask(tokens),
            is_decoder=False,
        ).last_hidden_state  # (B·K, L, D)
        return head(h[:, 0]).view(b, k)  # (B, K)


def build_model(config: RTQConfig) -> _RTQBase:
    """The task model named by ``config.task`` (plain branch, no registry)."""
    if config.task == "retrieval":
        model: _RTQBase = RTQRetrieval(config)
    elif config.task == "captioning":
        model = RTQCaptioner(config)
    elif config.task == "qa":
        model = RTQVideoQA(config)
    elif config.task == "multiple_choice":
        model = RTQMultipleChoice(config)
    else:
        raise ValueError(f"model.config.task={config.task!r}: expected retrieval, captioning, qa or multiple_choice")
    if config.init_std is not None:
        reinit_weights(model, config.init_std)
    return model


@torch.no_grad()
def reinit_weights(model: _RTQBase, std: float) -> None:
    """Redraw every Linear / Embedding weight of the online modules with trunc-normal(std) and copy them to the
    momentum modules (``RTQConfig.init_std``). The packed query/key/value projection of an ``nn.MultiheadAttention``
    (the temporal modules' MHSA) is a Linear weight in all but name, as it is in the official blocks (``qkv``): it is
    redrawn too."""
    momentum = {id(m) for _, ema in model.momentum_pairs() for m in ema.modules()}
    for m in model.modules():
        if id(m) in momentum:
            continue
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std)
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            nn.init.trunc_normal_(m.in_proj_weight, std=std)
    for online, ema in model.momentum_pairs():
        ema.load_state_dict(online.state_dict())
