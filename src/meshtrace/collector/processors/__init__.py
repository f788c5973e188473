"""Processors: each wraps the next consumer of its pipeline."""
