"""productpage: the Bookinfo web page and API; calls details, then reviews (3 s timeouts, reviews tried
twice), and shows what came back."""

from __future__ import annotations

import html
import os
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from meshtrace.demo.bookinfo.common import client, forward_headers, get_json

PRODUCTS = [
    {
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: '
        "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of "
        "his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, "
        "in addition to puns and word play.",
    }
]
SESSION_COOKIE = "session"


def _user(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def _stars(rating: dict[str, Any]) -> str:
    if "error" in rating:
        return f'<p class="text-danger"><em>{html.escape(str(rating["error"]))}</em></p>'
    if "stars" not in rating:
        return ""
    color = "red" if rating.get("color") == "red" else "black"
    full = int(rating["stars"])
    return f'<p class="stars" style="color: {color}">' + "★" * full + "☆" * (5 - full) + "</p>"


def page(product: dict[str, Any], details: Any, reviews: Any, user: str | None) -> str:
    if details is None:
        details_html = '<p class="text-danger"><em>Error fetching product details!</em></p>'
    else:
        rows = "".join(
            f"<dt>{html.escape(label)}:</dt><dd>{html.escape(str(details.get(key, '')))}</dd>"
            for label, key in (
                ("Type", "type"),
                ("Pages", "pages"),
                ("Publisher", "publisher"),
                ("Language", "language"),
                ("ISBN-10", "ISBN-10"),
                ("ISBN-13", "ISBN-13"),
            )
        )
        details_html = f"<h4>Book Details</h4><dl>{rows}</dl>"
    if reviews is None:
        reviews_html = (
            '<p class="text-danger"><em>Sorry, product reviews are currently unavailable for this book.</em></p>'
        )
    else:
        items = "".join(
            f"<blockquote><p>{html.escape(r['text'])}</p><small>{html.escape(r['reviewer'])}</small>"
            f"{_stars(r.get('rating') or {})}</blockquote>"
            for r in reviews.get("reviews", [])
        )
        served_by = html.escape(str(reviews.get("podname", "")))
        reviews_html = f"<h4>Book Reviews</h4>{items}<dl><dt>Reviews served by:</dt><dd><u>{served_by}</u></dd></dl>"
    account = (
        f'<span>{html.escape(user)}</span> <a href="/logout">sign out</a>'
        if user
        else '<form method="post" action="/login"><input name="username" placeholder="User Name">'
        '<input name="passwd" type="password" placeholder="Password"><button type="submit">Sign in</button></form>'
    )
    return f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>Simple Bookstore App</title>
<style>body{{font-family:sans-serif;margin:2em}} .stars{{font-size:1.4em}} .text-danger{{color:#a94442}}</style>
</head>
<body>
<nav><a href="/">BookInfo Sample</a> {account}</nav>
<h3>{html.escape(product["title"])}</h3>
<p>{product["descriptionHtml"]}</p>
<div class="details">{details_html}</div>
<div class="reviews">{reviews_html}</div>
</body>
</html>
"""


def app() -> Starlette:
    details_url = os.environ.get("DETAILS_SERVICE", "http://details:9080")
    reviews_url = os.environ.get("REVIEWS_SERVICE", "http://reviews:9080")
    ratings_url = os.environ.get("RATINGS_SERVICE", "http://ratings:9080")
    http = client()
    counters = {"requests": 0}

    async def fetch_details(request: Request, product_id: int) -> Any:
        headers = forward_headers(request, _user(request))
        return await get_json(http, f"{details_url}/details/{product_id}", headers, 3.0)

    async def fetch_reviews(request: Request, product_id: int) -> Any:
        headers = forward_headers(request, _user(request))
        return await get_json(http, f"{reviews_url}/reviews/{product_id}", headers, 3.0, tries=2)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(
            "<!DOCTYPE html><html><head><title>Simple Bookstore App</title></head><body>"
            "<h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>"
            '<p><a href="/productpage?u=normal">Normal user</a></p><p><a href="/productpage?u=test">Test user</a></p>'
            "</body></html>"
        )

    async def productpage(request: Request) -> HTMLResponse:
        counters["requests"] += 1
        product = PRODUCTS[0]
        details = await fetch_details(request, 0)
        reviews = await fetch_reviews(request, 0)
        return HTMLResponse(page(product, details, reviews, _user(request)))

    async def login(request: Request) -> Response:
        # The login form is urlencoded; reading it needs no multipart parser.
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        user = (form.get("username") or [""])[0]
        response = RedirectResponse(request.headers.get("referer") or "/productpage", status_code=302)
        if user:
            response.set_cookie(SESSION_COOKIE, user)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse(request.headers.get("referer") or "/productpage", status_code=302)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("Product page is healthy")

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(
            f"# TYPE productpage_requests_total counter\nproductpage_requests_total {counters['requests']}\n"
        )

    async def products(request: Request) -> JSONResponse:
        return JSONResponse(PRODUCTS)

    def _or_unavailable(data: Any, what: str) -> JSONResponse:
        if data is None:
            return JSONResponse({"error": f"Sorry, product {what} are currently unavailable"}, status_code=503)
        return JSONResponse(data)

    def product_id(request: Request) -> int | None:
        raw = request.path_params["id"]
        return int(raw) if raw.isascii() and raw.isdigit() else None

    async def product(request: Request) -> JSONResponse:
        pid = product_id(request)
        data = await fetch_details(request, pid) if pid is not None else None
        return _or_unavailable(data, "details")

    async def product_reviews(request: Request) -> JSONResponse:
        pid = product_id(request)
        data = await fetch_reviews(request, pid) if pid is not None else None
        return _or_unavailable(data, "reviews")

    async def product_ratings(request: Request) -> JSONResponse:
        pid = product_id(request)
        headers = forward_headers(request, _user(request))
        data = await get_json(http, f"{ratings_url}/ratings/{pid}", headers, 3.0) if pid is not None else None
        return _or_unavailable(data, "ratings")

    return Starlette(
        routes=[
            Route("/", index),
            Route("/index.html", index),
            Route("/productpage", productpage),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/api/v1/products", products),
            Route("/api/v1/products/{id}", product),
            Route("/api/v1/products/{id}/reviews", product_reviews),
            Route("/api/v1/products/{id}/ratings", product_ratings),
        ]
    )
