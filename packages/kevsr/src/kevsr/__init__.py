"""kevsr: knowledge-enhanced multi-perspective video representation learning for scene recognition.

Entry points: ``kevsr.module.KEVSRModule``, ``kevsr.data.KEVSRDataModule``, ``kevsr.models.KEVSRConfig`` /
``KEVSRModel``, ``kevsr.losses``, ``kevsr.metrics``, ``kevsr.knowledge`` (KG reader, keyword extraction),
``kevsr.synthetic`` (writers of the data format), ``kevsr.cli.main``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
