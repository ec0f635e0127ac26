"""SHE-Net: syntax-hierarchy-enhanced text-video retrieval."""

__version__ = "0.1.0"
