"""Loading BLIP weights into an RTQ model (spec §3.0, §9 Pretrained weights).

Two sources, both local (nothing is downloaded):

* LAVIS / Salesforce BLIP ``model_base_capfilt_large.pth`` (the paper's checkpoint): a ``torch.load``-able dict
  with key ``"model"``. Its timm-style ViT names are mapped to transformers' (``blocks.i.attn.qkv`` →
  ``encoder.layers.i.self_attn.qkv`` …); the BERT names already match.
* A local transformers BLIP folder (``Salesforce/blip-itm-base-coco`` etc.; COCO-finetuned, so numbers differ):
  ``vision_model.*`` → ``visual_encoder.*``.

Rules: the position embedding is resized bicubically to the model's grid (online *and* momentum ViT —
Deviation: the official loader resizes only the online one and leaves the momentum ``pos_embed`` at random init),
keys whose shapes differ (queues of another size) are dropped, and so are the queue pointer and index queue when the
feature queues they index were not loaded; a momentum parameter the checkpoint lacks (a transformers folder has no
``*_m`` copies) is copied from its loaded online parameter; missing keys (the new R/T modules, heads) are reported
in the log and returned.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from mmzoo.data import read_torch
from torch import nn

from rtqvl.models.video import resize_pos_embed

__all__ = ["lavis_to_rtq_key", "hf_to_rtq_key", "read_checkpoint", "load_pretrained"]

log = logging.getLogger(__name__)

_QUEUES = ("video_queue", "text_queue")

_VIT_RULES = [
    (r"^(visual_encoder(?:_m)?)\.cls_token$", r"\1.embeddings.class_embedding"),
    (r"^(visual_encoder(?:_m)?)\.pos_embed$", r"\1.embeddings.position_embedding"),
    (r"^(visual_encoder(?:_m)?)\.patch_embed\.proj\.", r"\1.embeddings.patch_embedding."),
    (r"^(visual_encoder(?:_m)?)\.blocks\.(\d+)\.norm1\.", r"\1.encoder.layers.\2.layer_norm1."),
    (r"^(visual_encoder(?:_m)?)\.blocks\.(\d+)\.norm2\.", r"\1.encoder.layers.\2.layer_norm2."),
    (r"^(visual_encoder(?:_m)?)\.blocks\.(\d+)\.attn\.qkv\.", r"\1.encoder.layers.\2.self_attn.qkv."),
    (r"^(visual_encoder(?:_m)?)\.blocks\.(\d+)\.attn\.proj\.", r"\1.encoder.layers.\2.self_attn.projection."),
    (r"^(visual_encoder(?:_m)?)\.blocks\.(\d+)\.mlp\.", r"\1.encoder.layers.\2.mlp."),
    (r"^(visual_encoder(?:_m)?)\.norm\.", r"\1.post_layernorm."),
    (r"^image_queue$", "video_queue"),
]


def lavis_to_rtq_key(key: str) -> str:
    """LAVIS BLIP state-dict key → this package's key."""
    for pattern, repl in _VIT_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def hf_to_rtq_key(key: str) -> str:
    """transformers BLIP key (``BlipForImageTextRetrieval`` / ``…ConditionalGeneration`` / ``…QuestionAnswering``)
    → this package's key."""
    if key.startswith("vision_model."):
        return "visual_encoder." + key[len("vision_model.") :]
    return key


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read a LAVIS ``.pth`` or a transformers folder into this package's key space.

    Raises:
        FileNotFoundError: naming ``model.config.pretrained_path`` and the expected file.
    """
    p = Path(path)
    hint = (
        f"model.config.pretrained_path={path!r}: expected the BLIP base CapFilt-L pre-training checkpoint "
        "'model_base_capfilt_large.pth' (Salesforce BLIP release) or a local transformers BLIP folder; "
        "see README, Pretrained weights."
    )
    if p.is_dir():
        st = p / "model.safetensors"
        pt = p / "pytorch_model.bin"
        if st.is_file():
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                raw = load_file(str(st))
            except SafetensorError as err:  # its message names no file
                raise ValueError(
                    f"model.config.pretrained_path {str(st)!r} cannot be read as safetensors ({err})"
                ) from err
        elif pt.is_file():
            raw = read_torch(pt, "model.config.pretrained_path")
        else:
            raise FileNotFoundError(hint + " (the folder has no model.safetensors / pytorch_model.bin)")
        return {hf_to_rtq_key(k): v for k, v in raw.items()}
    if not p.is_file():
        raise FileNotFoundError(hint)
    try:
        raw = torch.load(p, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError) as err:
        raise FileNotFoundError(hint + f" (unreadable: {err})") from err
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    return {lavis_to_rtq_key(k): v for k, v in state.items()}


def load_pretrained(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Load a BLIP checkpoint into ``model`` (non-strict, with the rules of the module docstring).

    Returns:
        (missing keys, dropped or unexpected keys).
    """
    state = read_checkpoint(path)
    own = model.state_dict()
    # the captioning / QA answer decoder is initialised from BLIP's captioning decoder (same names)
    loaded: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.endswith("embeddings.position_embedding") and key in own:
            value = resize_pos_embed(value, own[key].shape[1] - 1)
        if key not in own:
            dropped.append(key)
        elif own[key].shape != value.shape:
            dropped.append(f"{key} (shape {tuple(value.shape)} vs {tuple(own[key].shape)})")
        else:
            loaded[key] = value
    # the queue pointer indexes the checkpoint's queues: without them it points into a queue of another size
    if not all(q in loaded for q in _QUEUES):
        for k in ("queue_ptr", "idx_queue"):
            if loaded.pop(k, None) is not None:
                dropped.append(f"{k} (its feature queues were not loaded)")
    # momentum copies the checkpoint lacks (a transformers BLIP folder has none) start as copies of the loaded online
    # weights, as the momentum encoders are built from the online ones (LAVIS copy_params)
    for k in own:
        head, _, rest = k.partition(".")
        if k in loaded or not head.endswith("_m"):
            continue
        online = f"{head[:-2]}.{rest}" if rest else head[:-2]
        if online in loaded and loaded[online].shape == own[k].shape:
            loaded[k] = loaded[online]
    missing = [k for k in own if k not in loaded]
    model.load_state_dict(loaded, strict=False)
    log.info(
        "loaded %d tensors from %s; %d missing (new RTQ modules / heads), %d dropped",
        len(loaded),
        path,
        len(missing),
        len(dropped),
    )
    if missing:
        log.info("missing keys: %s", ", ".join(missing[:50]) + (" …" if len(missing) > 50 else ""))
    if dropped:
        log.info("dropped keys: %s", ", ".join(dropped[:50]) + (" …" if len(dropped) > 50 else ""))
    return missing, dropped
