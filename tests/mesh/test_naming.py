"""tracingServiceName → the proxy's service.name, and the injector's canonical labels."""

from __future__ import annotations

import pytest

from meshtrace.mesh.istio import naming

BOOKINFO = {"app": "productpage", "version": "v1"}
RELABELED = {"app": "productpage", "version": "v1", "service.istio.io/canonical-name": "storefront"}


@pytest.mark.parametrize(
    ("mode", "labels", "expected"),
    [
        ("APP_LABEL_AND_NAMESPACE", BOOKINFO, "productpage.default"),
        ("CANONICAL_NAME_ONLY", BOOKINFO, "productpage"),
        ("CANONICAL_NAME_AND_NAMESPACE", BOOKINFO, "productpage.default"),
        ("APP_LABEL_AND_NAMESPACE", RELABELED, "productpage.default"),
        ("CANONICAL_NAME_ONLY", RELABELED, "storefront"),
        ("CANONICAL_NAME_AND_NAMESPACE", RELABELED, "storefront.default"),
        ("APP_LABEL_AND_NAMESPACE", {}, "productpage-v1.default"),
        ("APP_LABEL_AND_NAMESPACE", {"app.kubernetes.io/name": "shop"}, "shop.default"),
    ],
)
def test_service_cluster(mode, labels, expected):
    assert naming.service_cluster(mode, "", labels, "productpage-v1", "default") == expected


def test_explicit_service_cluster_and_gateway():
    assert naming.service_cluster("", "my-svc", {}, "w", "ns") == "my-svc"
    gateway = {"app": "istio-ingressgateway", "istio": "ingressgateway"}
    assert naming.service_cluster("APP_LABEL_AND_NAMESPACE", "", gateway, "istio-ingressgateway", "istio-system") == (
        "istio-ingressgateway.istio-system"
    )


def test_canonical_labels():
    assert naming.canonical_name(BOOKINFO, "productpage-v1") == "productpage"
    assert naming.canonical_revision(BOOKINFO) == "v1"
    assert naming.canonical_revision({}) == "latest"
    assert (
        naming.node_id("sidecar", "10.1.2.3", "p-1", "default")
        == "sidecar~10.1.2.3~p-1.default~default.svc.cluster.local"
    )
