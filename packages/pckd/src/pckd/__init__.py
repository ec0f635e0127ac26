"""Preview-based Category Contrastive Learning for Knowledge Distillation (PCKD)."""

__version__ = "0.1.0"
