"""Evaluation: metrics, the VLM judge, the scorer, results and the HTML report.

The room above the inference pipeline: it scores edits (from ``EditPipeline`` or another
editor's files) and writes ``results.json`` and ``report.html``. See docs/evaluation.md.
"""

# Registers the EfficientNet feature metrics with build_metrics (see metrics.register_metric_family).
from sama.evaluation import feature_metrics  # noqa: F401
