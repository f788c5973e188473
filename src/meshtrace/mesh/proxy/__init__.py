"""The sidecar and gateway proxy: an HTTP/1.1 data path that traces like Envoy in Istio."""
