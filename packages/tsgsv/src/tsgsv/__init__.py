"""Temporal sentence grounding in streaming videos (TwinNet, language-guided feature compressor)."""

from .data import TSGVDataModule, TSGVEvalDataset, TSGVTrainDataset
from .losses import TSGSVLoss, focal_bce_loss, gaussian_labels, span_loss, twin_kd_loss, twin_regression_loss
from .metrics import GroundingEvalConfig, StreamingGroundingMetrics
from .models import StreamingTSGV, TSGSVConfig
from .module import TSGSVModule
from .streaming import StreamingGrounder

__all__ = [
    "GroundingEvalConfig",
    "StreamingGrounder",
    "StreamingGroundingMetrics",
    "StreamingTSGV",
    "TSGSVConfig",
    "TSGSVLoss",
    "TSGSVModule",
    "TSGVDataModule",
    "TSGVEvalDataset",
    "TSGVTrainDataset",
    "focal_bce_loss",
    "gaussian_labels",
    "span_loss",
    "twin_kd_loss",
    "twin_regression_loss",
]

__version__ = "0.1.0"
