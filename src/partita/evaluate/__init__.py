"""Evaluation: baselines a model must beat (``partita.evaluate.baselines``), metrics and reports."""
