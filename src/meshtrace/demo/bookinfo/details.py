"""details: the book's details as JSON (``/details/<id>``)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def book(product_id: int) -> dict[str, object]:
    return {
        "id": product_id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


async def details(request: Request) -> JSONResponse:
    raw = request.path_params["id"]
    if not (raw.isascii() and raw.isdigit()):
        return JSONResponse({"error": "please provide numeric product id"}, status_code=400)
    return JSONResponse(book(int(raw)))


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "Details is healthy"})


def app() -> Starlette:
    return Starlette(routes=[Route("/details/{id}", details), Route("/health", health)])
