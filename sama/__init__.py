"""sama-edit: trainable SAMA (Semantic Anchoring + Motion Alignment) for video editing."""

__version__ = "0.1.0"
