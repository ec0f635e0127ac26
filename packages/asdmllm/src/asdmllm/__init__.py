"""CMSC dataset and anti-stereotype debiasing of multimodal LLMs."""

__version__ = "0.1.0"
