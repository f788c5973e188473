"""reviews: two reviews of the book; v1 without ratings, v2 with black stars, v3 with red stars (both
call ratings: v2 waits up to 10 s, v3 up to 2.5 s)."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshtrace.demo.bookinfo.common import client, forward_headers, get_json

REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
)
VERSIONS = {"v1": (False, "black", 0.0), "v2": (True, "black", 10.0), "v3": (True, "red", 2.5)}


def app(version: str) -> Starlette:
    ratings_enabled, color, timeout = VERSIONS.get(version, VERSIONS["v1"])
    ratings_url = os.environ.get("RATINGS_SERVICE", "http://ratings:9080")
    http = client()

    async def reviews(request: Request) -> JSONResponse:
        raw = request.path_params["id"]
        if not (raw.isascii() and raw.isdigit()):
            return JSONResponse({"error": "please provide numeric product id"}, status_code=400)
        items = []
        ratings = None
        if ratings_enabled:
            ratings = await get_json(http, f"{ratings_url}/ratings/{raw}", forward_headers(request), timeout)
        for reviewer, text in REVIEWS:
            item: dict[str, object] = {"reviewer": reviewer, "text": text}
            if ratings_enabled:
                if ratings is None:
                    item["rating"] = {"error": "Ratings service is currently unavailable"}
                else:
                    stars = (ratings.get("ratings") or {}).get(reviewer)
                    item["rating"] = {"stars": stars, "color": color} if stars is not None else {}
            items.append(item)
        return JSONResponse(
            {"id": raw, "podname": os.environ.get("HOSTNAME", ""), "clustername": "null", "reviews": items}
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "Reviews is healthy"})

    return Starlette(routes=[Route("/reviews/{id}", reviews), Route("/health", health)])
