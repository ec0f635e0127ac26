"""EVE: zero-shot text-based video editing with depth guidance and temporal consistency constraints."""

from evedit.losses import TemporalConsistencyLoss, agreement_loss, tcc_loss, temporal_loss
from evedit.models import DepthConfig, EditConfig, EVEComponents, ModelConfig, TCCConfig, build_components
from evedit.pipeline import EVEPipeline, EVEPipelineOutput

__version__ = "0.1.0"

__all__ = [
    "DepthConfig",
    "EditConfig",
    "EVEComponents",
    "EVEPipeline",
    "EVEPipelineOutput",
    "ModelConfig",
    "TCCConfig",
    "TemporalConsistencyLoss",
    "agreement_loss",
    "build_components",
    "tcc_loss",
    "temporal_loss",
]
