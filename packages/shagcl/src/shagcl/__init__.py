"""Stacked Hybrid-Attention and Group Collaborative Learning for unbiased scene graph generation (CVPR 2022)."""

from shagcl.data import GQA200Dataset, SGGDataModule, SyntheticFeaturesConfig, VG150Dataset
from shagcl.losses import GCLLoss, ObjectLoss, collaborative_kd_loss, group_ce_loss, object_loss
from shagcl.metrics import SGRecall, sgg_recall
from shagcl.models import SHAGCL, SHAGCLConfig
from shagcl.module import SHAGCLModule

__all__ = [
    "GQA200Dataset",
    "GCLLoss",
    "ObjectLoss",
    "SGGDataModule",
    "SGRecall",
    "SHAGCL",
    "SHAGCLConfig",
    "SHAGCLModule",
    "SyntheticFeaturesConfig",
    "VG150Dataset",
    "collaborative_kd_loss",
    "group_ce_loss",
    "object_loss",
    "sgg_recall",
]

__version__ = "0.1.0"
