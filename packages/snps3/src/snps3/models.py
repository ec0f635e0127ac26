"""SNP-S3 networks: the shared BERT (SNP) or the three-encoder baseline (P3E), visual encoders, heads, MoCo copies.

Spec §3.2. Shapes: B batch, T sampled frames (one clip per frame), L text length, D hidden size (768 in the paper),
V vocabulary size. Videos enter as (B, T, 3, H, W) float tensors (normalised), the layout mmzoo.video returns.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_literal_fields, check_range
from mmzoo.data import read_torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "SNPS3Config",
    "check_literal_args",
    "TinyCNNEncoder",
    "ResNet50Encoder",
    "PVTv2Encoder",
    "VideoSwinEncoder",
    "StrideOnePatchEmbed3d",
    "MLMHead",
    "SNPS3Model",
    "MomentumEncoders",
    "TextOutput",
    "CrossOutput",
    "convert_video_swin_checkpoint",
    "load_checked",
    "is_pvt_release_format",
]


def check_literal_args(fn: Callable, values: Mapping[str, object], prefix: str) -> None:
    """:func:`check_choice` on every ``Literal``-typed parameter of ``fn`` found in ``values`` (key
    ``prefix.name``): a module's or data module's constructor arguments, as ``save_hyperparameters`` keeps them."""
    for name, hint in get_type_hints(fn).items():
        if get_origin(hint) is Literal and name in values:
            check_choice(f"{prefix}.{name}", values[name], get_args(hint))


@dataclass
class SNPS3Config:
    """Architecture of SNP-S3 (spec §3.2). Defaults are the paper's VST setting with bert-base-uncased."""

    arch: Literal["snp", "p3e"] = "snp"
    """`snp`: one shared BERT for text and cross-modal inputs (the paper's method); `p3e`: a separate cross encoder
    (own embeddings + `p3e_cross_layers` BERT layers), the Table II baseline."""
    bert: str | None = "bert-base-uncased"
    """Pretrained BERT (local folder or hub id) loaded with `BertModel.from_pretrained`; null builds a random BERT
    from the `vocab_size`/`hidden_size`/... keys below (tests, demos)."""
    vocab_size: int = 30522
    """Vocabulary size V (only used when `bert` is null)."""
    hidden_size: int = 768
    """Hidden size D (only used when `bert` is null)."""
    num_layers: int = 12
    """Number of BERT layers (only used when `bert` is null)."""
    num_heads: int = 12
    """Attention heads (only used when `bert` is null)."""
    intermediate_size: int = 3072
    """Feed-forward width (only used when `bert` is null)."""
    max_position_embeddings: int = 512
    """Position embeddings (only used when `bert` is null)."""
    sep_token_id: int = 102
    """Id of [SEP]; its word embedding closes the visual segment of the cross-modal input (spec §3.2 item 5)."""
    cls_token_id: int = 101
    """Id of [CLS] (never chosen by attentive masking)."""
    pad_token_id: int = 0
    """Id of [PAD]."""
    mask_token_id: int = 103
    """Id of [MASK] (attentive masking replaces words by it)."""
    p3e_cross_layers: int = 3
    """P3E only: number of cross-encoder layers, initialised from the first layers of the text BERT."""
    visual_encoder: Literal["video_swin", "pvt_v2_b2", "resnet50", "tiny_cnn"] = "video_swin"
    """Visual backbone (spec §3.2 item 2): VST, PVT, R50, or a 3-layer CNN for tests and demos."""
    visual_weights: str | None = None
    """Local path of the backbone's pretrained state dict (VIOLET `ckpt_video-swin.pt` or torchvision
    `swin3d_s` weights for video_swin, `pvt_v2_b2.pth` for PVT (release or timm key names), torchvision ImageNet
    weights for resnet50); null keeps the random initialisation. A file matching (almost) none of the backbone's
    tensor names raises."""
    swin_embed_dim: int = 96
    """Video Swin embedding width (output width = 8x)."""
    swin_depths: list[int] = field(default_factory=lambda: [2, 2, 18, 2])
    """Video Swin blocks per stage."""
    swin_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    """Video Swin heads per stage."""
    swin_window: list[int] = field(default_factory=lambda: [8, 7, 7])
    """Video Swin window (T, H, W)."""
    swin_drop_path: float = 0.2
    """Video Swin stochastic depth rate."""
    tiny_cnn_channels: int = 32
    """tiny_cnn: channels of its three stride-(4, 4, 2) convolutions (total stride 32)."""
    sim_head_dropout: float = 0.1
    """Dropout before the level-2 similarity head."""
    num_answers: int = 0
    """Open-ended QA: answer vocabulary size (1500 MSRVTT-QA, 1000 MSVD-QA); 0 builds no QA head."""
    mlm_ln_eps: float = 1e-6
    """LayerNorm epsilon of the two MLM heads (official value)."""

    def __post_init__(self) -> None:
        check_literal_fields(self, "model.config")  # arch, visual_encoder
        if self.bert is None:  # the sizes of the random BERT
            for key in (
                "vocab_size",
                "hidden_size",
                "num_layers",
                "num_heads",
                "intermediate_size",
                "max_position_embeddings",
            ):
                check_range(f"model.config.{key}", getattr(self, key), ge=1, integer=True)
        for key in ("sep_token_id", "cls_token_id", "pad_token_id", "mask_token_id"):
            check_range(f"model.config.{key}", getattr(self, key), ge=0, integer=True)
            if self.bert is None and getattr(self, key) >= self.vocab_size:
                raise ValueError(
                    f"model.config.{key}={getattr(self, key)} must be < model.config.vocab_size={self.vocab_size}"
                )
        check_range("model.config.p3e_cross_layers", self.p3e_cross_layers, ge=1, integer=True)
        check_range("model.config.tiny_cnn_channels", self.tiny_cnn_channels, ge=1, integer=True)
        check_range("model.config.sim_head_dropout", self.sim_head_dropout, ge=0, le=1)
        check_range("model.config.mlm_ln_eps", self.mlm_ln_eps, gt=0)
        check_range("model.config.swin_embed_dim", self.swin_embed_dim, ge=1, integer=True)
        check_range("model.config.swin_drop_path", self.swin_drop_path, ge=0, le=1)
        if self.bert is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.config.num_heads={self.num_heads} must divide model.config.hidden_size={self.hidden_size}"
            )
        if len(self.swin_depths) != 4 or len(self.swin_heads) != 4 or len(self.swin_window) != 3:
            raise ValueError("model.config.swin_depths and swin_heads need 4 entries and swin_window 3 (T, H, W)")
        for i, (depth, heads) in enumerate(zip(self.swin_depths, self.swin_heads, strict=True)):
            check_range(f"model.config.swin_depths[{i}]", depth, ge=0, integer=True)
            check_range(f"model.config.swin_heads[{i}]", heads, ge=1, integer=True)
            width = self.swin_embed_dim * 2**i  # stage i of the Video Swin is this wide
            if self.visual_encoder == "video_swin" and width % heads:
                raise ValueError(
                    f"model.config.swin_heads[{i}]={heads} must divide the stage width {width} "
                    f"(model.config.swin_embed_dim={self.swin_embed_dim} x {2**i})"
                )
        for i, size in enumerate(self.swin_window):
            check_range(f"model.config.swin_window[{i}]", size, ge=1, integer=True)
        if self.num_answers < 0:
            raise ValueError(f"model.config.num_answers={self.num_answers} must be >= 0")


# ------------------------------------------------------------------------------------------------ visual encoders


def masked_spatial_mean(fmap: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of fmap (N, D, h, w) over non-padding positions. pad_mask (N, H, W) bool, True = padding, or None."""
    if pad_mask is None:
        return fmap.mean(dim=(2, 3))  # (N, D)
    valid = ~F.interpolate(pad_mask[:, None].float(), size=fmap.shape[-2:], mode="nearest")[:, 0].bool()  # (N, h, w)
    valid = valid | ~valid.flatten(1).any(1)[:, None, None]  # a fully padded map (tiny frame) keeps every position
    w = valid[:, None].to(fmap.dtype)  # (N, 1, h, w)
    return (fmap * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))  # (N, D)


def _frames_pad_mask(pad_mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """(B, H, W) -> (B·T, H, W): every frame of a video shares its padding mask."""
    if pad_mask is None:
        return None
    return pad_mask[:, None].expand(-1, t, -1, -1).flatten(0, 1)  # (B·T, H, W)


class TinyCNNEncoder(nn.Module):
    """Three strided convolutions (stride 4, 4, 2 = 32) and a 1x1 projection to D; frames encoded independently."""

    def __init__(self, hidden_size: int, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 4, stride=4),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, stride=4),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 2, stride=2),
            nn.ReLU(),
        )
        self.proj = nn.Conv2d(channels, hidden_size, 1)

    def forward(self, frames: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """frames (B, T, 3, H, W), pad_mask (B, H, W) or None -> per-clip tokens (B, T, D)."""
        b, t = frames.shape[:2]
        fmap = self.proj(self.net(frames.flatten(0, 1)))  # (B·T, D, H/32, W/32)
        return masked_spatial_mean(fmap, _frames_pad_mask(pad_mask, t)).view(b, t, -1)  # (B, T, D)


class ResNet50Encoder(nn.Module):
    """torchvision ResNet-50 with frozen BatchNorm, last stage (2048 ch, stride 32), 1x1 conv to D (spec §3.2)."""

    def __init__(self, hidden_size: int, weights: str | None = None):
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.ops.misc import FrozenBatchNorm2d

        net = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        if weights is not None:
            state = _read_state(weights, "model.config.visual_weights", "torchvision ResNet-50 ImageNet state dict")
            load_checked(net, state, "model.config.visual_weights", weights, expected_leftovers=("fc.",))
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.proj = nn.Conv2d(2048, hidden_size, 1)

    def forward(self, frames: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """frames (B, T, 3, H, W) -> (B, T, D)."""
        b, t = frames.shape[:2]
        fmap = self.proj(self.body(frames.flatten(0, 1)))  # (B·T, D, H/32, W/32)
        return masked_spatial_mean(fmap, _frames_pad_mask(pad_mask, t)).view(b, t, -1)  # (B, T, D)


class PVTv2Encoder(nn.Module):
    """PVTv2-B2 (timm) last-stage map (512 ch, stride 32) and a 1x1 conv 512 -> D, frames encoded independently.

    Deviation: the official code reports width 512 and would add a second (uninitialised) projection; we use one
    1x1 convolution to D (spec §7 weak spot 5).
    """

    def __init__(self, hidden_size: int, weights: str | None = None, variant: str = "pvt_v2_b2"):
        super().__init__()
        try:
            import timm
            from timm.models.pvt_v2 import checkpoint_filter_fn
        except ImportError as err:
            raise ImportError("model.config.visual_encoder='pvt_v2_b2' needs timm: pip install 'snps3[pvt]'") from err
        self.body = timm.create_model(variant, pretrained=False, num_classes=0, global_pool="")
        if weights is not None:
            state = _read_state(weights, "model.config.visual_weights", "PVTv2 release pvt_v2_b2.pth")
            if is_pvt_release_format(state):  # PVT release names (patch_embed1, block1.0, norm1, dwconv.dwconv)
                state = checkpoint_filter_fn(state, self.body)
            load_checked(self.body, state, "model.config.visual_weights", weights, expected_leftovers=("head.",))
        self.proj = nn.Conv2d(self.body.num_features, hidden_size, 1)

    def forward(self, frames: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """frames (B, T, 3, H, W) -> (B, T, D)."""
        b, t = frames.shape[:2]
        fmap = self.proj(self.body.forward_features(frames.flatten(0, 1)))  # (B·T, D, H/32, W/32)
        return masked_spatial_mean(fmap, _frames_pad_mask(pad_mask, t)).view(b, t, -1)  # (B, T, D)


class StrideOnePatchEmbed3d(nn.Module):
    """VIOLET's Video Swin patch embedding: kernel (2, 4, 4), stride (1, 4, 4), one zero frame appended in time.

    The output keeps the number of time steps: (B, 3, T, H, W) -> (B, T, H/4, W/4, C). Parameter names match
    torchvision's ``PatchEmbed3d`` (``proj``, ``norm``) so its state dicts load.
    """

    def __init__(self, patch_size: list[int], in_channels: int = 3, embed_dim: int = 96, norm_layer=None):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch_size, stride=(1, *self.patch_size[1:]))
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, _, h, w = x.shape
        ph, pw = self.patch_size[1:]
        pad_t = self.patch_size[0] - 1  # one zero frame at the end for kernel 2, stride 1
        x = F.pad(x, (0, (-w) % pw, 0, (-h) % ph, 0, pad_t))  # (B, 3, T+1, H', W')
        x = self.proj(x).permute(0, 2, 3, 4, 1)  # (B, T, H'/4, W'/4, C)
        return self.norm(x) if self.norm is not None else x


def convert_video_swin_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map official Video Swin / VIOLET keys to torchvision ``SwinTransformer3d`` keys.

    ``layers.i.blocks.j.*`` -> ``features.(2i).j.*`` (``mlp.fc1``/``mlp.fc2`` -> ``mlp.0``/``mlp.3``),
    ``layers.i.downsample.*`` -> ``features.(2i+1).*``; prefixes ``module.``, ``backbone.``, ``swin.`` and
    ``enc_img.swin.`` are stripped; torchvision keys pass unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        for prefix in ("module.", "enc_img.", "backbone.", "swin."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k.startswith("layers."):
            parts = k.split(".")
            stage = int(parts[1])
            if parts[2] == "blocks":
                rest = ".".join(parts[4:]).replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.3")
                k = f"features.{2 * stage}.{parts[3]}.{rest}"
            elif parts[2] == "downsample":
                k = f"features.{2 * stage + 1}." + ".".join(parts[3:])
        out[k] = value
    return out


class VideoSwinEncoder(nn.Module):
    """Video Swin (VST) in VIOLET's configuration on torchvision's ``SwinTransformer3d`` (spec §3.2 item 2).

    All T frames go through the network jointly; the patch embedding has temporal stride 1 so the output has T
    time steps. Output width 8·embed_dim (768 for the official embed 96), projected to D by a Linear when different.
    """

    def __init__(self, cfg: SNPS3Config, hidden_size: int):
        super().__init__()
        from torchvision.models.video.swin_transformer import SwinTransformer3d

        from snps3.swin_attention import fixed_order_swin_block

        self.swin = SwinTransformer3d(
            block=fixed_order_swin_block,
            patch_size=[2, 4, 4],
            embed_dim=cfg.swin_embed_dim,
            depths=list(cfg.swin_depths),
            num_heads=list(cfg.swin_heads),
            window_size=list(cfg.swin_window),
            stochastic_depth_prob=cfg.swin_drop_path,
            num_classes=1,
            patch_embed=StrideOnePatchEmbed3d,
        )
        self.swin.head = nn.Identity()
        if cfg.visual_weights is not None:
            path = Path(cfg.visual_weights)
            if not path.is_file():
                raise FileNotFoundError(
                    f"model.config.visual_weights={cfg.visual_weights!r} does not exist: supply VIOLET's "
                    "ckpt_video-swin.pt or torchvision's Swin3D_S_Weights.KINETICS400_V1 state dict"
                )
            state = read_torch(path, "model.config.visual_weights")
            state = state.get("state_dict", state.get("model", state))
            load_checked(
                self.swin,
                convert_video_swin_checkpoint(state),
                "model.config.visual_weights",
                cfg.visual_weights,
                expected_leftovers=("head.",),
                ignore_missing=("relative_position_index",),
            )
        width = cfg.swin_embed_dim * 8
        self.proj = nn.Identity() if width == hidden_size else nn.Linear(width, hidden_size)

    def forward(self, frames: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """frames (B, T, 3, H, W) -> (B, T, D)."""
        b, t = frames.shape[:2]
        x = self.swin.patch_embed(frames.permute(0, 2, 1, 3, 4))  # (B, T, H/4, W/4, C)
        x = self.swin.features(self.swin.pos_drop(x))  # (B, T, H/32, W/32, 8C)
        x = self.proj(self.swin.norm(x))  # (B, T, h, w, D)
        fmap = x.flatten(0, 1).permute(0, 3, 1, 2)  # (B·T, D, h, w)
        return masked_spatial_mean(fmap, _frames_pad_mask(pad_mask, t)).view(b, t, -1)  # (B, T, D)


def _read_state(path: str, key: str, what: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path!r} does not exist: supply the {what}")
    state = read_torch(path, key)
    return state.get("state_dict", state.get("model", state))


def is_pvt_release_format(state: dict[str, torch.Tensor]) -> bool:
    """True for state dicts named like the PVT release (``patch_embed1.*``, ``block1.0.*``), not like timm."""
    return "patch_embed.proj.weight" not in state and any(k.startswith(("patch_embed1.", "block1.")) for k in state)


MIN_LOADED_FRACTION = 0.1
"""A checkpoint that fills fewer than this share of a module's tensors is treated as the wrong file."""


def load_checked(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    key: str,
    path: str,
    expected_leftovers: tuple[str, ...] = (),
    ignore_missing: tuple[str, ...] = (),
) -> tuple[list[str], list[str]]:
    """``load_state_dict(strict=False)`` that checks how much of ``module`` the checkpoint actually fills.

    Raises a ValueError naming the config ``key`` and the file when fewer than ``MIN_LOADED_FRACTION`` of the
    module's tensors (or none) have a same-named entry in ``state`` (a wrong or mis-prefixed checkpoint).
    Otherwise missing and unexpected keys are logged as warnings, except keys starting with
    ``expected_leftovers`` (e.g. a classifier head) and missing keys containing ``ignore_missing``, which are
    logged at info level. Returns (missing, unexpected) as ``load_state_dict`` does.
    """
    target = [k for k in module.state_dict() if not any(s in k for s in ignore_missing)]
    loaded = [k for k in target if k in state]
    if not loaded or len(loaded) < MIN_LOADED_FRACTION * len(target):
        sample = list(state)[:3]
        raise ValueError(
            f"{key}={path!r}: only {len(loaded)} of the {len(target)} expected tensors have a matching name in "
            f"the file (its keys look like {sample}, the model's like {target[:3]}); is this the right "
            "checkpoint, with the right key prefix?"
        )
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(s in k for s in ignore_missing)]
    quiet_missing = [k for k in missing if k.startswith(expected_leftovers)]
    quiet_unexpected = [k for k in unexpected if k.startswith(expected_leftovers)]
    loud_missing = [k for k in missing if k not in quiet_missing]
    loud_unexpected = [k for k in unexpected if k not in quiet_unexpected]
    log.info("%s=%s: loaded %d of %d tensors", key, path, len(loaded), len(target))
    if loud_missing or loud_unexpected:
        log.warning(
            "%s=%s: %d tensors missing from the file (kept at their initialisation) %s; "
            "%d entries of the file unused %s",
            key,
            path,
            len(loud_missing),
            loud_missing[:8],
            len(loud_unexpected),
            loud_unexpected[:8],
        )
    if quiet_missing or quiet_unexpected:
        log.info("%s=%s: expected leftovers %s", key, path, (quiet_missing + quiet_unexpected)[:8])
    return missing, unexpected


# ------------------------------------------------------------------------------------------------------- heads


class MLMHead(nn.Module):
    """BERT LM-prediction head: dense D->D, GELU, LayerNorm, decoder tied to the word embeddings, own bias."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float = 1e-6):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """hidden (..., D), word_embeddings (V, D) -> logits (..., V)."""
        x = self.norm(F.gelu(self.dense(hidden)))  # (..., D)
        return F.linear(x, word_embeddings, self.bias)  # (..., V)


@dataclass
class TextOutput:
    """Text-only pass of the shared BERT."""

    hidden: torch.Tensor
    """(B, L, D) last hidden states."""
    pooled: torch.Tensor
    """(B, D) BERT pooler output on position 0 (not normalised)."""
    attentions: tuple[torch.Tensor, ...] | None = None
    """Per layer (B, heads, L, L) attention maps when requested."""


@dataclass
class CrossOutput:
    """Cross-modal pass on ``[text | visual tokens, SEP]``."""

    text_hidden: torch.Tensor
    """(B, L, D) outputs at the text positions."""
    visual_hidden: torch.Tensor
    """(B, T, D) outputs at the visual positions (the trailing visual [SEP] dropped)."""
    pooled: torch.Tensor
    """(B, D) cross pooler on position 0 ([CLS])."""


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1 = keep -> (B, 1, 1, L) additive mask (0 keep, dtype-min drop)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


# ---------------------------------------------------------------------------------------------------- the model


class SNPS3Model(nn.Module):
    """Shared-network video-text model (spec §3.2).

    Under ``arch: snp`` the same BERT embeddings and layers encode text alone and text + visual tokens; only the
    pooler is duplicated for cross-modal outputs. Under ``arch: p3e`` a separate cross encoder (own embeddings,
    ``p3e_cross_layers`` layers, own pooler) initialised from the text BERT handles joint inputs.
    """

    def __init__(self, cfg: SNPS3Config):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.cfg = cfg
        if cfg.bert is None:
            bert_cfg = BertConfig(
                vocab_size=cfg.vocab_size,
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads,
                intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_position_embeddings,
            )
            bert_cfg._attn_implementation = "eager"
            self.bert = BertModel(bert_cfg, add_pooling_layer=True)
        else:
            try:
                self.bert = BertModel.from_pretrained(cfg.bert, add_pooling_layer=True, attn_implementation="eager")
            except OSError as err:
                raise FileNotFoundError(
                    f"model.config.bert={cfg.bert!r} could not be loaded: supply a local folder holding "
                    "bert-base-uncased (config.json + weights) or a reachable hub id, or null for a random BERT"
                ) from err
            # from_pretrained returns eval mode, and Lightning keeps each submodule's mode when fit starts: BERT's
            # dropout would stay off for the whole of pre-training and fine-tuning
            self.bert.train()
        d = self.bert.config.hidden_size
        v = self.bert.config.vocab_size
        self.hidden_size, self.vocab_size = d, v
        if cfg.arch == "snp":
            self.cross_pooler = copy.deepcopy(self.bert.pooler)  # initialised as a copy of the text pooler
            self.p3e_cross = None
        else:
            cross_cfg = copy.deepcopy(self.bert.config)
            cross_cfg.num_hidden_layers = cfg.p3e_cross_layers
            self.p3e_cross = BertModel(cross_cfg, add_pooling_layer=True)
            self.p3e_cross.load_state_dict(self.bert.state_dict(), strict=False)  # embeddings + first layers + pooler
            self.cross_pooler = None
        if cfg.visual_encoder == "tiny_cnn":
            self.visual = TinyCNNEncoder(d, cfg.tiny_cnn_channels)
        elif cfg.visual_encoder == "resnet50":
            self.visual = ResNet50Encoder(d, cfg.visual_weights)
        elif cfg.visual_encoder == "pvt_v2_b2":
            self.visual = PVTv2Encoder(d, cfg.visual_weights)
        elif cfg.visual_encoder == "video_swin":
            self.visual = VideoSwinEncoder(cfg, d)
        else:
            raise ValueError(
                f"model.config.visual_encoder={cfg.visual_encoder!r} is not one of "
                "video_swin, pvt_v2_b2, resnet50, tiny_cnn"
            )
        self.clip_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))  # MLP_v (spec §3.2 item 4)
        self.sim_head = nn.Sequential(
            nn.Dropout(cfg.sim_head_dropout), nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, 1)
        )
        self.mlm_text = MLMHead(d, v, cfg.mlm_ln_eps)
        self.mlm_cross = MLMHead(d, v, cfg.mlm_ln_eps)
        self.itm_head = nn.Linear(d, 2)
        self.qa_head = nn.Linear(d, cfg.num_answers) if cfg.num_answers > 0 else None

    # -- encoders -----------------------------------------------------------------------------------------------
    @property
    def cross_bert(self):
        """The BERT that encodes joint inputs: the text BERT itself under SNP (shared), a separate one under P3E."""
        return self.bert if self.p3e_cross is None else self.p3e_cross

    @property
    def word_embeddings(self) -> torch.Tensor:
        """(V, D) word-embedding matrix the MLM decoders are tied to."""
        return self.bert.embeddings.word_embeddings.weight

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False
    ) -> TextOutput:
        """Text-only pass. input_ids, attention_mask (B, L) -> TextOutput."""
        return text_forward(self.bert, input_ids, attention_mask, output_attentions)

    def text_embed(self, text: TextOutput) -> torch.Tensor:
        """Level-1 text embedding t = normalize(BERT_pooler(h_0)): (B, D)."""
        return F.normalize(text.pooled, dim=-1)

    def encode_visual(self, frames: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """frames (B, T, 3, H, W) -> per-clip visual tokens (B, T, D) (spatial mean over valid positions)."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
        return self.visual(frames, pad_mask)

    def clip_embed(self, visual_embed: torch.Tensor) -> torch.Tensor:
        """Level-1 clip embeddings v = normalize(MLP_v(visual_embed)): (B, T, D)."""
        return F.normalize(self.clip_mlp(visual_embed), dim=-1)

    def cross(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_embed: torch.Tensor) -> CrossOutput:
        """Cross-modal pass on ``[CLS] w.. [SEP] [PAD].. | v_1..v_T [SEP]`` (spec §3.2 item 5).

        input_ids, attention_mask (B, L); visual_embed (B, T, D). Text positions 0..L-1 with token type 0; visual
        positions restart at 0..T with token type 1; the visual [SEP] is the word embedding of ``sep_token_id``.
        """
        bert = self.cross_bert
        b, length = input_ids.shape
        t = visual_embed.shape[1]
        text_emb = bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))  # (B, L, D)
        sep = bert.embeddings.word_embeddings.weight[self.cfg.sep_token_id]  # (D,)
        vis_in = torch.cat(
            [visual_embed, sep.view(1, 1, -1).expand(b, 1, -1).to(visual_embed.dtype)], dim=1
        )  # (B, T+1, D)
        pos = torch.arange(t + 1, device=input_ids.device).unsqueeze(0).expand(b, -1)  # (B, T+1)
        vis_emb = bert.embeddings(
            inputs_embeds=vis_in, token_type_ids=torch.ones_like(pos), position_ids=pos
        )  # (B, T+1, D)
        hidden = torch.cat([text_emb, vis_emb], dim=1)  # (B, L+T+1, D)
        mask = torch.cat([attention_mask, attention_mask.new_ones(b, t + 1)], dim=1)  # (B, L+T+1)
        out = bert.encoder(hidden, attention_mask=_additive_mask(mask, hidden.dtype)).last_hidden_state  # (B, L+T+1, D)
        pooler = self.cross_pooler if self.p3e_cross is None else self.p3e_cross.pooler
        return CrossOutput(text_hidden=out[:, :length], visual_hidden=out[:, length : length + t], pooled=pooler(out))

    # -- heads --------------------------------------------------------------------------------------------------
    def sim_score(self, pooled: torch.Tensor) -> torch.Tensor:
        """Level-2 matching logit s = sim_head(pooled_x): (B, D) -> (B,)."""
        return self.sim_head(pooled).squeeze(-1)

    def mlm_logits(self, hidden: torch.Tensor, head: Literal["text", "cross"]) -> torch.Tensor:
        """(…, D) -> (…, V) through ``mlm_text`` or ``mlm_cross`` (decoders tied to the word embeddings)."""
        check_choice("head", head, ("text", "cross"))  # anything else would read the cross-modal head
        return (self.mlm_text if head == "text" else self.mlm_cross)(hidden, self.word_embeddings)

    def qa_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, num_answers)."""
        if self.qa_head is None:
            raise ValueError("model.config.num_answers is 0: set it to the answer-vocabulary size for QA")
        return self.qa_head(pooled)


def text_forward(bert, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool) -> TextOutput:
    """Text-only BERT pass (token type 0, positions 0..L-1); attentions via the eager attention when requested."""
    out = bert(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=torch.zeros_like(input_ids),
        output_attentions=output_attentions,
    )
    return TextOutput(
        hidden=out.last_hidden_state,
        pooled=out.pooler_output,
        attentions=tuple(out.attentions) if output_attentions else None,
    )


class MomentumEncoders(nn.Module):
    """MoCo key encoders (spec §3.2 item 6): copies of the visual encoder with MLP_v and of the text BERT with pooler.

    Updated by ``θ_k ← m θ_k + (1 − m) θ_q`` before keys are computed; never trained by gradients.
    """

    def __init__(self, model: SNPS3Model):
        super().__init__()
        self.visual = copy.deepcopy(model.visual)
        self.clip_mlp = copy.deepcopy(model.clip_mlp)
        self.bert = copy.deepcopy(model.bert)
        for p in self.parameters():
            p.requires_grad_(False)

    def pairs(self, model: SNPS3Model):
        """(key module, query module) pairs."""
        return [(self.visual, model.visual), (self.clip_mlp, model.clip_mlp), (self.bert, model.bert)]

    @torch.no_grad()
    def update(self, model: SNPS3Model, momentum: float) -> None:
        """θ_k ← m θ_k + (1 − m) θ_q for every parameter."""
        for key_mod, query_mod in self.pairs(model):
            for pk, pq in zip(key_mod.parameters(), query_mod.parameters()):
                pk.mul_(momentum).add_(pq.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def keys(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, frames: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Momentum keys: text (B, D) and clips (B, T, D), both L2-normalised."""
        text = text_forward(self.bert, input_ids, attention_mask, False)
        t_key = F.normalize(text.pooled, dim=-1)  # (B, D)
        v_key = F.normalize(self.clip_mlp(self.visual(frames, pad_mask)), dim=-1)  # (B, T, D)
        return t_key, v_key
