"""Evaluation: task scores of a model (+ adapter) on held-apart data."""
