"""RADAR: micro-video tagging as link prediction on a heterogeneous graph."""

__version__ = "0.1.0"
