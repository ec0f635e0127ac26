"""RTQ models: the video encoder (Refine + Temporal) and the BLIP query heads."""

from rtqvl.models.rtq import (
    TINY_TEXT,
    TINY_VISION,
    RTQCaptioner,
    RTQConfig,
    RTQMultipleChoice,
    RTQRetrieval,
    RTQVideoQA,
    build_model,
    momentum_update,
)
from rtqvl.models.text import TextConfig, build_tokenizer
from rtqvl.models.video import (
    RTQVisionEncoder,
    VisionConfig,
    kmedoids,
    kmedoids_reference,
    refine_segments,
    spectral_medoids,
    temporal_shift,
    token_shift,
)
from rtqvl.models.weights import load_pretrained

__all__ = [
    "TINY_TEXT",
    "TINY_VISION",
    "RTQCaptioner",
    "RTQConfig",
    "RTQMultipleChoice",
    "RTQRetrieval",
    "RTQVideoQA",
    "RTQVisionEncoder",
    "TextConfig",
    "VisionConfig",
    "build_model",
    "build_tokenizer",
    "kmedoids",
    "kmedoids_reference",
    "load_pretrained",
    "momentum_update",
    "refine_segments",
    "spectral_medoids",
    "temporal_shift",
    "token_shift",
]
