"""Reading YAML the way kubectl apply does, with errors that say where and how to fix."""

from __future__ import annotations

import pytest

from meshtrace.mesh.resources import ResourceError, Selector, load_files, parse


def test_seed_bookinfo_parses_with_sources(seed):
    loaded = parse("bookinfo.yaml", (seed / "bookinfo.yaml").read_text())
    kinds = [o.kind for o in loaded.objects]
    assert kinds.count("Deployment") == 6
    assert kinds.count("Service") == 4
    assert kinds.count("ServiceAccount") == 4
    assert all(o.namespace == "default" for o in loaded.objects)
    assert loaded.objects[0].source is not None
    assert str(loaded.objects[0].source) == "bookinfo.yaml, document 1"
    assert not loaded.skipped


def test_label_selectors_like_kubectl(seed):
    text = (seed / "bookinfo.yaml").read_text()
    assert [o.name for o in parse("f", text, selector="app=reviews,version=v3").objects] == ["reviews-v3"]
    assert [o.name for o in parse("f", text, selector="account=reviews").objects] == ["bookinfo-reviews"]
    assert len(parse("f", text, selector="service in (details,ratings)").objects) == 2
    assert all(o.kind != "Service" for o in parse("f", text, selector="!service").objects)
    assert Selector.parse("app!=x").matches({"app": "y"})


def test_namespace_flag_fills_and_must_agree(seed):
    loaded = parse("otel.yaml", (seed / "otel.yaml").read_text(), namespace="observability")
    assert {o.namespace for o in loaded.objects} == {"observability"}
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: other}\n"
    with pytest.raises(ResourceError) as err:
        parse("cm.yaml", text, namespace="observability")
    assert "cm.yaml, document 1 (ConfigMap other/a)" in str(err.value)
    assert "metadata.namespace" in str(err.value)
    assert "fix:" in str(err.value)


def test_unknown_kinds_are_listed_not_silently_dropped():
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n---\n"
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s}\n"
    )
    loaded = parse("dr.yaml", text)
    assert [o.kind for o in loaded.objects] == ["ServiceAccount"]
    assert loaded.skipped == [
        "dr.yaml, document 1: DestinationRule r (networking.istio.io/v1) is not run by the local mesh"
    ]


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("kind: Service\nmetadata: {name: a}\n", "apiVersion", "is required"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\n", "metadata.name", "not a valid name"),
        ("apiVersion: apps/v2\nkind: Deployment\nmetadata: {name: a}\n", "apiVersion", "not an API version"),
        ("- just\n- a list\n", "", "must be a mapping"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: a\n", "", "not valid YAML at line"),
    ],
)
def test_errors_name_file_document_path(text, path, words):
    with pytest.raises(ResourceError) as err:
        parse("bad.yaml", text)
    message = str(err.value)
    assert message.startswith("bad.yaml, document")
    assert path in message
    assert words in message


def test_directories_apply_in_name_order(tmp_path):
    (tmp_path / "b.yaml").write_text("x: 1")
    (tmp_path / "a.yml").write_text("x: 1")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [name.rsplit("/", 1)[-1] for name, _ in load_files([tmp_path])] == ["a.yml", "b.yaml"]
    with pytest.raises(ResourceError, match="no such file"):
        list(load_files([tmp_path / "missing.yaml"]))
