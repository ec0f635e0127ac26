"""Preview-based Category Contrastive Learning for Knowledge Distillation (PCKD).

Public entry points live in their modules (kept out of this file so that importing ``pckd.losses`` in a
spawned worker does not import Lightning, torchvision and scikit-learn):
``pckd.module.PCKDModule``, ``pckd.data.PCKDDataModule``, ``pckd.models.PCKDConfig`` / ``build_backbone``,
``pckd.losses`` (every loss), ``pckd.testing`` (writers of the official formats), ``pckd.cli.main``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
