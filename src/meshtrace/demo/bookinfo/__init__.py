"""Istio's Bookinfo sample as four small services: productpage, details, reviews (v1/v2/v3) and ratings.

They answer like the originals (pages, JSON payloads, calls, timeouts and retries) and, like them, forward
the tracing headers from each incoming request onto the calls it makes, which is what lets the sidecars'
spans form one trace.
"""
