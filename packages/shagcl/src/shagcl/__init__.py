"""Stacked Hybrid-Attention and Group Collaborative Learning for unbiased scene graph generation."""

__version__ = "0.1.0"
