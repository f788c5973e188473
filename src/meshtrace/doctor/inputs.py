"""What the doctor reads: Kubernetes and Istio objects from files and directories, as written or as
``kubectl get ... -o yaml`` dumped them (``kind: List``), any kind, unknown ones kept for the checks that
care. ``FILE@NAMESPACE`` gives a file the namespace ``kubectl apply -n`` would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshtrace.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Doc:
    file: str
    number: int  # 1-based document number in the file
    body: dict[str, Any]
    namespace: str  # metadata.namespace, else the file's @namespace, else "default"

    @property
    def kind(self) -> str:
        return str(self.body.get("kind") or "")

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.body.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def labels(self) -> dict[str, str]:
        labels = self.metadata.get("labels")
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}

    @property
    def annotations(self) -> dict[str, str]:
        ann = self.metadata.get("annotations")
        return {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, dict) else {}

    def at(self, path: str = "") -> str:
        """Where a finding points: ``file, document N (Kind ns/name): path``."""
        what = f"{self.kind} {self.namespace}/{self.name}" if self.name else self.kind
        return f"{self.file}, document {self.number} ({what})" + (f": {path}" if path else "")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
    if path.is_file():
        return [path]
    raise ConfigError(f"{path}: no such file or directory", source="-f", fix="check the path given to -f")


def load(specs: list[str]) -> list[Doc]:
    """Documents of every ``FILE_OR_DIR[@NAMESPACE]``; a YAML error names the file and line."""
    docs: list[Doc] = []
    for spec in specs:
        raw, _, namespace = spec.partition("@") if "@" in spec and not Path(spec).exists() else (spec, "", "")
        for file in _files(Path(raw)):
            try:
                documents = list(yaml.safe_load_all(file.read_text()))
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                raise ConfigError(
                    f"not valid YAML{where}: {getattr(exc, 'problem', exc)}",
                    source=str(file),
                    fix="fix the YAML syntax",
                ) from None
            number = 0
            for document in documents:
                if not isinstance(document, dict):
                    continue
                number += 1
                items = document.get("items") if document.get("kind", "").endswith("List") else None
                for body in items if isinstance(items, list) else [document]:
                    if not isinstance(body, dict):
                        continue
                    raw_meta = body.get("metadata")
                    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
                    ns = str(meta.get("namespace") or namespace or "default")
                    docs.append(Doc(str(file), number, body, ns))
    return docs
