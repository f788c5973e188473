"""Receivers: where data enters a pipeline."""
