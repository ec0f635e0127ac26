"""EVE: zero-shot text-based video editing with depth guidance and temporal consistency."""

__version__ = "0.1.0"
