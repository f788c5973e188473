"""``python -m meshtrace.demo.bookinfo SERVICE [--version vN] [--port 9080]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshtrace.demo.bookinfo", description="Run one Bookinfo service.")
    parser.add_argument("service", choices=["productpage", "details", "reviews", "ratings"])
    parser.add_argument("--version", default="v1", help="reviews: v1 (no stars), v2 (black), v3 (red)")
    parser.add_argument("--port", type=int, default=9080)
    args = parser.parse_args(argv)
    from meshtrace.demo.bookinfo import common

    if args.service == "productpage":
        from meshtrace.demo.bookinfo.productpage import app
    elif args.service == "details":
        from meshtrace.demo.bookinfo.details import app
    elif args.service == "ratings":
        from meshtrace.demo.bookinfo.ratings import app
    else:
        from meshtrace.demo.bookinfo.reviews import app as reviews_app

        common.run(reviews_app(args.version), args.port)
        return 0
    common.run(app(), args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
