"""Static files with a cache policy, and the content policy of the pages.

Starlette's `StaticFiles` sends ETag and Last-Modified but no Cache-Control, so a browser
guesses how long to keep a file. Here each mount says it: vendored assets, whose URLs carry
their package's version, are kept for a year without asking again; the page's own files,
which change with the app and have no build step to fingerprint their names, are revalidated
on every use (a 304 when unchanged).
"""

from __future__ import annotations

import os

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

#: For files whose URL changes whenever their content does (a version query).
IMMUTABLE = "public, max-age=31536000, immutable"
#: For files that may change under the same URL: keep, but check the ETag before each use.
REVALIDATE = "no-cache"
#: Content-Security-Policy of the HTML pages: everything from this origin only (inline scripts
#: and styles, data: and blob: URLs are what Swagger UI and ReDoc build themselves). ReDoc
#: always loads its "powered by" logo from a CDN; this makes the browser skip it, as it would
#: anything else a page might try to fetch from another host.
SAME_ORIGIN_ONLY = "default-src 'self' 'unsafe-inline' data: blob:"


class CachedStaticFiles(StaticFiles):
    """`StaticFiles` that adds a fixed `Cache-Control` header to every file it serves."""

    def __init__(self, *, directory: str | os.PathLike[str], cache_control: str) -> None:
        super().__init__(directory=directory)
        self.cache_control = cache_control

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        """The file (or its 304) with this mount's cache policy."""
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = self.cache_control
        return response
