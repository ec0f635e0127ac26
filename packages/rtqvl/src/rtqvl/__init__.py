"""RTQ: Refine, Temporal model, Query on BLIP for video-language tasks."""

__version__ = "0.1.0"
