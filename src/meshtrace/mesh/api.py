"""The mesh's control API (loopback only), used by ``meshtrace apply/get/logs/label/rollout/down``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from meshtrace.errors import ConfigError
from meshtrace.mesh.resources import Obj, Source
from meshtrace.mesh.views import object_view, pod_view

if TYPE_CHECKING:
    from meshtrace.mesh.daemon import Mesh


def _error(exc: ConfigError, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"error": exc.message, "where": exc.source, "path": exc.path, "fix": exc.fix, "text": str(exc)},
        status_code=status,
    )


def control_app(mesh: Mesh) -> Starlette:
    async def status(request: Request) -> JSONResponse:
        return JSONResponse(
            {**mesh.info(), "warnings": mesh.control.diagnostics.warnings, "tracing": mesh.control.diagnostics.tracing}
        )

    async def apply(request: Request) -> JSONResponse:
        body = await request.json()
        objects = [Obj(d["body"], Source(d["file"], d["document"]) if d.get("file") else None) for d in body["objects"]]
        try:
            applied = mesh.cluster.apply(objects)
        except ConfigError as exc:
            return _error(exc)
        return await _settle(applied.results, applied.warnings, body.get("wait", 0))

    async def _settle(results: list[str], warnings: list[str], wait: float) -> JSONResponse:
        await asyncio.sleep(0.05)
        settled, pending = True, list[str]()
        if wait:
            settled, pending = await mesh.settled(float(wait))
        warnings = warnings + [w for w in mesh.control.diagnostics.warnings if w not in warnings]
        return JSONResponse({"results": results, "warnings": warnings, "settled": settled, "pending": pending})

    async def delete(request: Request) -> JSONResponse:
        body = await request.json()
        results = []
        for item in body["objects"]:
            obj = Obj(item["body"])
            found = mesh.cluster.delete(obj.kind, obj.namespace, obj.name)
            results.append(f'{obj.kind.lower()} "{obj.name}" {"deleted" if found else "not found"}')
        return await _settle(results, [], body.get("wait", 0))

    async def pods(request: Request) -> JSONResponse:
        namespace = request.query_params.get("namespace") or None
        return JSONResponse([pod_view(p) for p in mesh.cluster.pods_in(namespace)])

    async def objects(request: Request) -> JSONResponse:
        kind = request.path_params["kind"]
        namespace = request.query_params.get("namespace") or None
        name = request.query_params.get("name")
        found = [o for o in mesh.cluster.objects_of(kind, namespace) if name is None or o.name == name]
        return JSONResponse([object_view(o, mesh) for o in found])

    async def logs(request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["pod"]
        pod = mesh.cluster.pods.get((namespace, name)) or _by_prefix(mesh, namespace, name)
        if pod is None:
            return JSONResponse(
                {"error": f'pods "{name}" not found', "fix": "list them: meshtrace get pods"}, status_code=404
            )
        container_name = request.query_params.get("container")
        containers = (
            [c for c in pod.containers if not c.is_proxy or pod.router]
            if not container_name
            else [c for c in pod.containers if c.name == container_name]
        )
        if not containers:
            names = ", ".join(c.name for c in pod.containers)
            return JSONResponse(
                {"error": f"container {container_name!r} is not in pod {pod.name}", "fix": f"choose one of: {names}"},
                status_code=404,
            )
        if len(containers) > 1 and not container_name:
            names = ", ".join(c.name for c in pod.containers)
            return JSONResponse(
                {"error": f"pod {pod.name} has several containers", "fix": f"choose one with -c: {names}"},
                status_code=400,
            )
        path = containers[0].log
        if request.query_params.get("follow") != "true":
            return PlainTextResponse(path.read_text(errors="replace") if path.exists() else "")

        async def stream() -> Any:
            position = 0
            while not mesh.stopped.is_set():
                if path.exists():
                    with open(path, "rb") as f:  # noqa: ASYNC230 - a local log file, read in one call
                        f.seek(position)
                        chunk = f.read()
                    if chunk:
                        position += len(chunk)
                        yield chunk
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/plain")

    async def label(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            result = mesh.cluster.label(body["kind"], body.get("namespace", ""), body["name"], body["labels"])
        except ConfigError as exc:
            return _error(exc, 404)
        return await _settle([result], [], body.get("wait", 0))

    async def restart(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            result = mesh.cluster.restart(body["namespace"], body["deployment"])
        except ConfigError as exc:
            return _error(exc, 404)
        return await _settle([result], [], body.get("wait", 0))

    async def wait(request: Request) -> JSONResponse:
        settled, pending = await mesh.settled(float(request.query_params.get("timeout", "60")))
        return JSONResponse({"settled": settled, "pending": pending})

    async def shutdown(request: Request) -> JSONResponse:
        asyncio.get_running_loop().call_soon(mesh.request_stop)
        return JSONResponse({"stopping": True})

    return Starlette(
        routes=[
            Route("/status", status),
            Route("/apply", apply, methods=["POST"]),
            Route("/delete", delete, methods=["POST"]),
            Route("/pods", pods),
            Route("/objects/{kind}", objects),
            Route("/logs/{namespace}/{pod}", logs),
            Route("/label", label, methods=["POST"]),
            Route("/restart", restart, methods=["POST"]),
            Route("/wait", wait),
            Route("/shutdown", shutdown, methods=["POST"]),
        ]
    )


def _by_prefix(mesh: Mesh, namespace: str, name: str) -> Any:
    """``logs deployment/NAME`` or a unique prefix, as kubectl accepts ``deploy/NAME``."""
    name = name.split("/", 1)[-1]
    matches = [p for p in mesh.cluster.pods_in(namespace) if p.name.startswith(name) and not p.deleting]
    return matches[0] if len(matches) == 1 or (matches and all(m.owner == name for m in matches)) else None
