"""RTQ: Refine, Temporal model, Query on BLIP for video-language tasks (Wang et al., ACM MM 2023)."""

from rtqvl.data import RTQDataModule
from rtqvl.models import RTQConfig, TextConfig, VisionConfig
from rtqvl.module import RTQModule

__version__ = "0.1.0"
__all__ = ["RTQConfig", "RTQDataModule", "RTQModule", "TextConfig", "VisionConfig", "__version__"]
