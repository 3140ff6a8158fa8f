"""Evaluation on labelled query photos, and its reports (tables, plots, timings)."""
