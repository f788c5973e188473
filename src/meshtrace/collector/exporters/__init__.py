"""Exporters: where data leaves the collector, each behind a sending queue with retries."""
