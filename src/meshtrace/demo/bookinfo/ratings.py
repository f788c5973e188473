"""ratings: the stars each reviewer gave (``GET``/``POST /ratings/<id>``)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DEFAULT = {"Reviewer1": 5, "Reviewer2": 4}


def app() -> Starlette:
    stored: dict[int, dict[str, int]] = {}

    async def get(request: Request) -> JSONResponse:
        raw = request.path_params["id"]
        if not (raw.isascii() and raw.isdigit()):
            return JSONResponse({"error": "please provide numeric product ID"}, status_code=400)
        product_id = int(raw)
        return JSONResponse({"id": product_id, "ratings": stored.get(product_id, DEFAULT)})

    async def post(request: Request) -> JSONResponse:
        raw = request.path_params["id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        valid = isinstance(body, dict) and all(isinstance(v, int) for v in body.values())
        if not (raw.isascii() and raw.isdigit()) or not valid:
            return JSONResponse({"error": "please provide valid ratings JSON"}, status_code=400)
        stored[int(raw)] = {str(k): int(v) for k, v in body.items()}
        return JSONResponse({"id": int(raw), "ratings": stored[int(raw)]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "Ratings is healthy"})

    return Starlette(
        routes=[
            Route("/ratings/{id}", get, methods=["GET"]),
            Route("/ratings/{id}", post, methods=["POST"]),
            Route("/health", health),
        ]
    )
