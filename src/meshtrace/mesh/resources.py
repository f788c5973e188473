"""Kubernetes-style objects read from YAML files: what ``meshtrace apply -f`` sends to the mesh.

Errors say which file, which document, which object, which path inside it and how to fix it. Kinds the
mesh does not run are listed and skipped with a warning, never silently.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshtrace.errors import ConfigError

# kind -> accepted apiVersions
SUPPORTED: dict[str, tuple[str, ...]] = {
    "Namespace": ("v1",),
    "Service": ("v1",),
    "ServiceAccount": ("v1",),
    "ConfigMap": ("v1",),
    "Secret": ("v1",),
    "Deployment": ("apps/v1",),
    "IstioOperator": ("install.istio.io/v1alpha1",),
    "Telemetry": ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"),
    "Gateway": ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"),
    "VirtualService": ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"),
}
CLUSTER_SCOPED = frozenset(("Namespace", "IstioOperator"))
# Accepted and stored, but they change nothing in the local mesh; said once per apply.
STORED_ONLY = frozenset(("ServiceAccount", "Secret"))
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Source:
    file: str
    document: int  # 1-based, counting non-empty documents

    def __str__(self) -> str:
        return f"{self.file}, document {self.document}"


class ResourceError(ConfigError):
    """An object that cannot be applied: file, document, object, path in it, problem and fix."""

    def __init__(self, origin: Source | None, what: str, path: str, problem: str, fix: str) -> None:
        where = str(origin) if origin else ""
        if what:
            where = f"{where} ({what})" if where else what
        super().__init__(problem, source=where, path=path, fix=fix)
        self.origin = origin


@dataclass(slots=True)
class Obj:
    """One object as applied (``body`` is the whole document)."""

    body: dict[str, Any]
    source: Source | None = None
    created: int = 0  # creation order, as creationTimestamp sorts
    generation: int = 1
    uid: str = ""
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion", ""))

    @property
    def metadata(self) -> dict[str, Any]:
        return self.body.setdefault("metadata", {})

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.metadata.get("labels") or {}).items()}

    @property
    def annotations(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.metadata.get("annotations") or {}).items()}

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def describe(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


@dataclass(slots=True)
class Loaded:
    objects: list[Obj]
    skipped: list[str]  # "file, document N: Kind name (apiVersion) is not run by the local mesh"


def load_files(paths: Iterable[str | Path]) -> Iterator[tuple[str, str]]:
    """(file name, text) for files and directories (a directory's ``.yaml``/``.yml``/``.json`` files in
    name order, as ``kubectl apply -f DIR`` does); ``-`` reads standard input."""
    import sys

    for raw in paths:
        if str(raw) == "-":
            yield "<stdin>", sys.stdin.read()
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
            if not files:
                raise ResourceError(None, "", "", f"{path}: no .yaml, .yml or .json files in this directory", "")
            for file in files:
                yield str(file), file.read_text()
        elif path.is_file():
            yield str(path), path.read_text()
        else:
            raise ResourceError(None, "", "", f"{path}: no such file or directory", "check the path given to -f")


def parse(file: str, text: str, namespace: str | None = None, selector: str | None = None) -> Loaded:
    """Objects from one multi-document YAML text, validated; ``namespace`` fills in a missing one (and
    must agree with an explicit one, as ``kubectl apply -n`` requires)."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ResourceError(
            Source(file, 0), "", "", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", "fix the YAML syntax"
        ) from None
    matcher = Selector.parse(selector) if selector else None
    objects: list[Obj] = []
    skipped: list[str] = []
    number = 0
    for document in documents:
        if document is None:
            continue
        number += 1
        source = Source(file, number)
        for body in _items(document, source):
            obj = Obj(copy.deepcopy(body), source)
            _check_shape(obj)
            if obj.kind not in SUPPORTED:
                skipped.append(f"{source}: {obj.kind} {obj.name} ({obj.api_version}) is not run by the local mesh")
                continue
            if obj.api_version not in SUPPORTED[obj.kind]:
                raise ResourceError(
                    source,
                    obj.describe(),
                    "apiVersion",
                    f"{obj.api_version!r} is not an API version of {obj.kind}",
                    f"use one of: {', '.join(SUPPORTED[obj.kind])}",
                )
            if matcher is not None and not matcher.matches(obj.labels):
                continue
            _namespace(obj, namespace)
            objects.append(obj)
    return Loaded(objects, skipped)


def _items(document: Any, source: Source) -> Iterator[dict[str, Any]]:
    if not isinstance(document, dict):
        raise ResourceError(source, "", "", f"a document must be a mapping, not {type(document).__name__}", "")
    if document.get("kind") == "List" and isinstance(document.get("items"), list):
        yield from document["items"]
    else:
        yield document


def _check_shape(obj: Obj) -> None:
    source = obj.source
    for key in ("apiVersion", "kind"):
        if not obj.body.get(key):
            raise ResourceError(source, "", key, "is required", f"every object needs '{key}'")
    if obj.kind == "IstioOperator" and obj.body.get("metadata") is None:
        obj.body["metadata"] = {}  # istioctl install takes an IstioOperator without metadata
    metadata = obj.body.get("metadata")
    if not isinstance(metadata, dict):
        raise ResourceError(source, obj.kind, "metadata", "is required", "add metadata.name")
    if obj.kind == "IstioOperator" and not obj.name:
        metadata["name"] = "installed-state"
    if not obj.name:
        raise ResourceError(source, obj.kind, "metadata.name", "is required", "name the object")
    if not _NAME.match(obj.name) or len(obj.name) > 253:
        raise ResourceError(
            source,
            obj.describe(),
            "metadata.name",
            f"{obj.name!r} is not a valid name",
            "use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit",
        )
    for key in ("labels", "annotations"):
        value = metadata.get(key)
        if value is not None and not isinstance(value, dict):
            raise ResourceError(source, obj.describe(), f"metadata.{key}", "must be a mapping", "")


def _namespace(obj: Obj, namespace: str | None) -> None:
    if obj.kind in CLUSTER_SCOPED:
        obj.metadata.pop("namespace", None)
        return
    given = obj.metadata.get("namespace")
    if given and namespace and given != namespace:
        raise ResourceError(
            obj.source,
            obj.describe(),
            "metadata.namespace",
            f"the namespace from the provided object {given!r} does not match the namespace {namespace!r}",
            "drop -n, or make them agree",
        )
    obj.metadata["namespace"] = given or namespace or "default"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        return value is None or value not in self.values


@dataclass(frozen=True, slots=True)
class Selector:
    """A label selector as ``kubectl -l`` takes it: ``a=b,c!=d,e,!f,g in (h,i),j notin (k)``."""

    requirements: tuple[Requirement, ...]

    @staticmethod
    def parse(text: str) -> Selector:
        requirements = []
        for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
            item = part.strip()
            if not item:
                continue
            set_based = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", item)
            if set_based:
                values = tuple(v.strip() for v in set_based.group(3).split(",") if v.strip())
                requirements.append(Requirement(set_based.group(1), set_based.group(2), values))
            elif "!=" in item:
                key, value = item.split("!=", 1)
                requirements.append(Requirement(key.strip(), "!=", (value.strip(),)))
            elif "=" in item:
                key, value = item.split("==", 1) if "==" in item else item.split("=", 1)
                requirements.append(Requirement(key.strip(), "=", (value.strip(),)))
            elif item.startswith("!"):
                requirements.append(Requirement(item[1:].strip(), "!exists"))
            elif re.fullmatch(r"[\w./-]+", item):
                requirements.append(Requirement(item, "exists"))
            else:
                raise ResourceError(
                    None, "", "-l", f"cannot parse the label selector {text!r}", "use key=value,key2!=v"
                )
        return Selector(tuple(requirements))

    @staticmethod
    def from_labels(labels: dict[str, str]) -> Selector:
        return Selector(tuple(Requirement(k, "=", (v,)) for k, v in labels.items()))

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)
