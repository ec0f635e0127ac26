"""Knowledge-enhanced two-stream video scene recognition with self-distillation."""

__version__ = "0.1.0"
