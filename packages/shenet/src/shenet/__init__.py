"""SHE-Net: syntax-hierarchy-enhanced text-video retrieval (Yu et al., arXiv:2404.14066).

Public names are imported on first access (PEP 562), so ``import shenet.models`` stays light (spawned DDP test
workers and the benchmark do not import Lightning's data stack).
"""

import importlib

__version__ = "0.1.0"

_WHERE = {
    "ActivityNetDataset": "shenet.data",
    "DiDeMoDataset": "shenet.data",
    "DigitsDataset": "shenet.data",
    "MSRVTTDataset": "shenet.data",
    "MSVDDataset": "shenet.data",
    "SHENetDataModule": "shenet.data",
    "HeuristicParser": "shenet.hierarchy",
    "ParserConfig": "shenet.hierarchy",
    "SpacyParser": "shenet.hierarchy",
    "SyntaxHierarchy": "shenet.hierarchy",
    "SyntaxNode": "shenet.hierarchy",
    "build_parser": "shenet.hierarchy",
    "SHENetContrastiveLoss": "shenet.losses",
    "symmetric_infonce_loss": "shenet.losses",
    "RetrievalMetrics": "shenet.metrics",
    "retrieval_metrics": "shenet.metrics",
    "SHENet": "shenet.models",
    "SHENetConfig": "shenet.models",
    "SHENetModule": "shenet.module",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'shenet' has no attribute {name!r}")
