"""RADAR: micro-video tagging as link prediction on a heterogeneous graph."""

from .data import KwaiTagDataModule, build_split_graph, load_split_graph, read_kwai_files
from .losses import RadarLoss, adversarial_lambda, discriminator_losses, tagging_loss
from .metrics import TaggingMetrics, label_map, precision_recall_at_k, sample_map
from .models import Radar, RadarConfig
from .module import RadarModule
from .sampler import BlockSampler

__all__ = [
    "BlockSampler",
    "KwaiTagDataModule",
    "Radar",
    "RadarConfig",
    "RadarLoss",
    "RadarModule",
    "TaggingMetrics",
    "adversarial_lambda",
    "build_split_graph",
    "discriminator_losses",
    "label_map",
    "load_split_graph",
    "precision_recall_at_k",
    "read_kwai_files",
    "sample_map",
    "tagging_loss",
]

__version__ = "0.1.0"
