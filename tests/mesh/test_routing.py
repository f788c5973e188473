"""Gateway and VirtualService parsing and the route decorators that name gateway spans."""

from __future__ import annotations

import pytest

from meshtrace.mesh.istio.routing import fqdn, operation, parse_gateway, parse_virtual_service
from meshtrace.mesh.resources import ResourceError, parse


def test_seed_gateway_and_virtual_service(seed):
    objects = parse("bookinfo-gateway.yaml", (seed / "bookinfo-gateway.yaml").read_text()).objects
    gateway = parse_gateway(objects[0])
    assert gateway.selector == {"istio": "ingressgateway"}
    assert gateway.servers[0].port == 80
    vs = parse_virtual_service(objects[1])
    assert vs.gateways == ("default/bookinfo-gateway",)
    route = vs.http[0]
    names = [operation(m, route.destinations, [9080], vs.name, 8080) for m in route.matches]
    assert names == [
        "productpage.default.svc.cluster.local:9080/productpage",
        "productpage.default.svc.cluster.local:9080/static*",
        "productpage.default.svc.cluster.local:9080/login",
        "productpage.default.svc.cluster.local:9080/logout",
        "productpage.default.svc.cluster.local:9080/api/v1/products*",
    ]


def test_fqdn_and_weighted_names():
    assert fqdn("reviews", "shop") == "reviews.shop.svc.cluster.local"
    assert fqdn("reviews.default", "shop") == "reviews.default.svc.cluster.local"
    assert fqdn("reviews.default.svc.cluster.local", "shop") == "reviews.default.svc.cluster.local"
    text = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: split}\nspec:\n  hosts: ['*']\n"
        "  http:\n  - route:\n"
        "    - {destination: {host: a}, weight: 80}\n    - {destination: {host: b}, weight: 20}\n"
    )
    vs = parse_virtual_service(parse("v.yaml", text).objects[0])
    assert operation(None, vs.http[0].destinations, [9080, 9080], vs.name, 8080) == "split:8080/*"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("  hosts: []\n", "at least one host"),
        (
            "  hosts: ['*']\n  http:\n"
            "  - match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{destination: {host: a}}]\n",
            "exactly one",
        ),
        ("  hosts: ['*']\n  http:\n  - route: [{destination: {port: {number: 1}}}]\n", "host: is required"),
        (
            "  hosts: ['*']\n  http:\n  - route:\n"
            "    - {destination: {host: a}, weight: 10}\n    - {destination: {host: b}, weight: 10}\n",
            "add up to 100",
        ),
    ],
)
def test_virtual_service_validation(spec, words):
    text = f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n{spec}"
    with pytest.raises(ResourceError, match=words):
        parse_virtual_service(parse("v.yaml", text).objects[0])
