"""The sidecar and gateway proxy: an HTTP/1.1 data path that traces like Envoy in Istio.

Its data path runs compiled when ``make`` built it from these sources (``native``), interpreted otherwise.
"""

from meshtrace.mesh.proxy.native import activate

NATIVE = activate(__path__)
