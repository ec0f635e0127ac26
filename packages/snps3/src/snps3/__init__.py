"""SNP-S3: shared network pre-training and significant semantic strengthening (TCSVT 2024)."""

from snps3.data import SNPS3DataModule
from snps3.losses import LVWMLoss, MILNCELoss, MoCoLoss, milnce_loss, moco_contrastive_loss
from snps3.models import SNPS3Config, SNPS3Model
from snps3.module import SNPS3Module

__version__ = "0.1.0"
__all__ = [
    "SNPS3Config",
    "SNPS3Model",
    "SNPS3Module",
    "SNPS3DataModule",
    "MoCoLoss",
    "MILNCELoss",
    "LVWMLoss",
    "milnce_loss",
    "moco_contrastive_loss",
    "__version__",
]
