"""CMSC dataset and anti-stereotype (counter-stereotype) debiasing of multimodal LLMs (ASD / CSD)."""

from .data import CMSCDataset, DebiasDataModule, FairFaceDataset, SocialCounterfactualsDataset
from .losses import SocialFairnessLoss, autoregressive_loss, social_fairness_loss
from .metrics import SkewMetric, max_min_skew, per_sample_skew, skew_at_k, skew_table
from .models import MLLMConfig, MultimodalLLM
from .module import ASDModule, DebiasConfig, SkewConfig
from .sampling import ResampledEpochSampler, bias_aware_resample

__version__ = "0.1.0"

__all__ = [
    "ASDModule",
    "CMSCDataset",
    "DebiasConfig",
    "DebiasDataModule",
    "FairFaceDataset",
    "MLLMConfig",
    "MultimodalLLM",
    "ResampledEpochSampler",
    "SkewConfig",
    "SkewMetric",
    "SocialCounterfactualsDataset",
    "SocialFairnessLoss",
    "autoregressive_loss",
    "bias_aware_resample",
    "max_min_skew",
    "per_sample_skew",
    "skew_at_k",
    "skew_table",
    "social_fairness_loss",
]
