"""The local mesh: Kubernetes and Istio resources applied to pods that run as processes on loopback."""
