"""Temporal sentence grounding in streaming videos (TwinNet, language-guided feature compressor)."""

__version__ = "0.1.0"
