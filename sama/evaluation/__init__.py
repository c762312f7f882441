"""Evaluation: metrics, the VLM judge, the scorer, results and the HTML report.

The room above the inference pipeline: it scores edits (from ``EditPipeline`` or another
editor's files) and writes ``results.json`` and ``report.html``. See docs/evaluation.md.
"""
