"""Answering questions about stored traces: parameters, adjusters, and the query service."""
