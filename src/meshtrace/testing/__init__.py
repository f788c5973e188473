"""Test kit shipped with meshtrace: the store contract suite and Istio-shaped trace generators."""
