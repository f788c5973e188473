"""Which local program runs for a container image.

- Bookinfo's images (``docker.io/istio/examples-bookinfo-<service>-v<N>``, ``registry.istio.io/release/...``,
  any tag) run meshtrace's Bookinfo services.
- ``otel/opentelemetry-collector`` (``-contrib``, ``-k8s``) runs ``meshtrace collector`` with the container's
  ``--config`` files, read from the pod's mounted ConfigMap volumes.
- ``istio/proxyv2`` runs the meshtrace proxy (the ingress gateway, or a sidecar).
- Anything else runs the command in the pod annotation ``meshtrace.io/command`` (or
  ``meshtrace.io/command.<container>`` when the pod has several containers), split like a shell line, with
  Kubernetes' ``$(VAR)`` expansion from the container's environment.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass

COMMAND_ANNOTATION = "meshtrace.io/command"
_BOOKINFO = re.compile(r"(?:^|/)examples-bookinfo-(details|ratings|reviews|productpage)-v(\d+)(?::[\w.-]+)?(?:@.*)?$")
_COLLECTOR = re.compile(r"(?:^|/)opentelemetry-collector(?:-contrib|-k8s)?(?::[\w.-]+)?(?:@.*)?$")
_PROXY = re.compile(r"(?:^|/)proxyv2(?::[\w.-]+)?(?:@.*)?$")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class ImageNotRunnable(Exception):
    """No local program for this image; the message says how to give one."""


@dataclass(frozen=True, slots=True)
class Program:
    argv: tuple[str, ...]
    kind: str  # "bookinfo", "collector", "proxy", "command"


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)``: replaced when ``VAR`` is set, left as written otherwise."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def program_for(
    image: str,
    container: str,
    command: list[str],
    args: list[str],
    annotations: dict[str, str],
    env: dict[str, str],
    mounts: dict[str, str],
    single: bool,
) -> Program:
    """The local command line for a container; ``mounts`` maps mount paths to local directories."""
    python = sys.executable
    custom = annotations.get(f"{COMMAND_ANNOTATION}.{container}") or (
        annotations.get(COMMAND_ANNOTATION) if single else None
    )
    if custom:
        return Program(tuple(expand(part, env) for part in shlex.split(custom)), "command")
    bookinfo = _BOOKINFO.search(image)
    if bookinfo:
        service, version = bookinfo.groups()
        return Program((python, "-m", "meshtrace.demo.bookinfo", service, "--version", f"v{version}"), "bookinfo")
    if _COLLECTOR.search(image):
        configs = _collector_configs([*command, *args], mounts)
        argv = [python, "-m", "meshtrace", "collector"]
        for config in configs:
            argv += ["--config", config]
        return Program(tuple(argv), "collector")
    if _PROXY.search(image):
        return Program((python, "-m", "meshtrace.mesh.proxy"), "proxy")
    raise ImageNotRunnable(
        f"no local program for image {image!r}: annotate the pod template with "
        f'{COMMAND_ANNOTATION}{"" if single else "." + container}: "<command line>"'
    )


def _collector_configs(argv: list[str], mounts: dict[str, str]) -> list[str]:
    configs = []
    items = iter(argv)
    for item in items:
        value = None
        if item.startswith("--config="):
            value = item.split("=", 1)[1]
        elif item == "--config":
            value = next(items, None)
        if value:
            configs.append(local_path(value, mounts))
    return configs


def local_path(path: str, mounts: dict[str, str]) -> str:
    """A path inside the container, as a local path through the pod's volume mounts."""
    for mount, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
        prefix = mount.rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            return local + path[len(prefix) :]
    return path
