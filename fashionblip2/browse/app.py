"""The browser's ASGI app: one static page (index.html, app.js, style.css) and JSON endpoints over a
finished run, read-only.

Why Starlette and a hand-written page rather than Gradio: Gradio calls home (analytics, version
checks) and fetches front-end assets, while this app makes no network call at run time and serves
nothing it did not ship; every file it serves goes through one path check we own
(:func:`fashionblip2.browse.data.safe_file`), where Gradio's file routes are its own; the page is
plain HTML and JavaScript that Chromium tests drive by element id; and Starlette with uvicorn is a
fraction of Gradio's dependencies (no FastAPI, pydantic, gradio-client, huggingface-hub, ...).

Endpoints (all GET unless said; errors are ``{"error": message}`` with a 4xx status):

    /                       the page                     /static/<file>   its script and style
    /api/meta               datasets, facets, score ranges, models, limits
    /api/triplets           the explorer: dataset, category, source, q, min_<score>, max_<score>,
                            flagged, sort, order, page, size
    /api/images             the gallery: source, category, split, q, model (only its index's images), page, size
    /api/leakage            near-duplicate pairs: level, page, size
    /image?id=<image id>    an image file of the run
    POST /api/upload        the body is an image file (X-Filename: its percent-encoded name); kept in memory
    POST /api/search        {"models": [...], "reference": {"image_id"|"upload": ...}, "text", "k", "target_id"}

Nothing is written: tables are read at start, models and indexes when first asked for, uploads
stay in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from fashionblip2.browse.data import (
    BrowseError,
    ImagePaths,
    ImageTable,
    LeakageTable,
    TripletTable,
    read_manifest,
    read_triplets,
    safe_file,
)
from fashionblip2.browse.search import (
    MAX_K,
    MAX_MODELS_PER_QUERY,
    MAX_PIXELS,
    MAX_TEXT_CHARS,
    MAX_UPLOAD_BYTES,
    Models,
    Reference,
    Uploads,
    check_text,
    clean_name,
    decode_upload,
    run_query,
)

STATIC = Path(__file__).resolve().parent / "static"
STATIC_SUFFIXES = (".html", ".js", ".css")
MAX_JSON_BYTES = 64 * 1024
# The page loads only its own files; images may also be the upload's local preview (blob:).
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]
log = logging.getLogger(__name__)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response (plain ASGI: no buffering of bodies)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class Run:
    """What the app serves, read once: the tables, the image paths and the models."""

    def __init__(self, root: str | os.PathLike[str], device: torch.device, image_roots: list[str] | None = None):
        self.root = Path(root).resolve()
        manifest = read_manifest(self.root)
        self.paths = ImagePaths(self.root, manifest, image_roots or [])
        self.triplets = TripletTable(read_triplets(self.root))
        self.images = ImageTable(manifest)
        self.leakage = LeakageTable.read(self.root)
        self.models = Models(self.root, device)
        self.uploads = Uploads()
        if self.leakage is not None:  # images the manifest lacks (e.g. from another run), by their recorded paths
            for side in ("a", "b"):
                frame = self.leakage.frame
                if f"image_{side}" in frame and f"path_{side}" in frame:
                    self.paths.add(frame[f"image_{side}"].astype(str), frame[f"path_{side}"].astype(str))
        for name in self.models.names():
            ids, paths = self.models.gallery(name)
            if len(ids) == len(paths):  # an index without its paths still searches; its images need the manifest
                self.paths.add(ids, paths)


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes (not read whole first)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BrowseError(f"the {what} has {int(declared):,} bytes; at most {limit:,}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BrowseError(f"the {what} is over {limit:,} bytes", 413)
    return bytes(body)


def create_app(run: Run, allowed_hosts: list[str] | None = None) -> Starlette:
    """The app over ``run``. ``allowed_hosts``: the Host headers accepted (the CLI passes the
    loopback names when it binds loopback, so that a web page cannot reach the app by DNS rebinding)."""

    # Queries run one at a time, on one thread: each already uses all of PyTorch's CPU threads, and
    # two at once would only compete for the same cores (and hold two models' activations).
    model_thread = ThreadPoolExecutor(1, thread_name_prefix="browse-model")

    async def page(request: Request) -> Response:
        return FileResponse(safe_file(STATIC / "index.html", [STATIC], STATIC_SUFFIXES))

    async def static(request: Request) -> Response:
        return FileResponse(safe_file(STATIC / request.path_params["name"], [STATIC], STATIC_SUFFIXES))

    async def meta(request: Request) -> Response:
        return JSONResponse(
            {
                "run": str(run.root),
                "triplets": run.triplets.facets(),
                "images": {"count": len(run.images.frame), **run.images.facets()},
                "models": run.models.names(),
                "leakage": None if run.leakage is None else {"pairs": len(run.leakage.frame)},
                "limits": {
                    "text_chars": MAX_TEXT_CHARS,
                    "upload_bytes": MAX_UPLOAD_BYTES,
                    "megapixels": MAX_PIXELS / 1e6,
                    "k": MAX_K,
                    "models": MAX_MODELS_PER_QUERY,
                },
            }
        )

    def triplets_page(params) -> dict[str, Any]:
        return run.triplets.page(run.triplets.parse(params))

    async def triplets(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(triplets_page, request.query_params))

    async def images(request: Request) -> Response:
        params = request.query_params
        only = run.models.gallery(params["model"])[0] if params.get("model") else None
        return JSONResponse(await run_in_threadpool(run.images.page, params, only))

    async def leakage(request: Request) -> Response:
        if run.leakage is None:
            raise BrowseError("this run has no leakage matches (data/leakage/matches.csv)", 404)
        return JSONResponse(run.leakage.page(request.query_params))

    async def image(request: Request) -> Response:
        image_id = request.query_params.get("id", "")
        path = run.paths.file(image_id)
        return FileResponse(path, headers={"cache-control": "private, max-age=3600"})

    async def upload(request: Request) -> Response:
        data = await read_body(request, MAX_UPLOAD_BYTES, "upload")
        picture = await run_in_threadpool(decode_upload, data)
        name = clean_name(request.headers.get("x-filename"))
        token = run.uploads.add(picture, name)
        return JSONResponse({"upload": token, "name": name, "width": picture.width, "height": picture.height})

    def reference_of(spec: Any) -> Reference:
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"image_id", "upload"} & set(spec)):
            raise BrowseError('reference must be {"image_id": ...} or {"upload": ...}')
        if "upload" in spec:
            token = str(spec["upload"])
            picture = run.uploads.get(token)
            return Reference(f"upload:{token}", "upload", lambda: picture)
        image_id = str(spec["image_id"])
        path = run.paths.file(image_id)  # checked now: an unknown or refused image fails before any model loads
        from fashionblip2.common.images import load_as_stored

        # As the file stores it: each model converts it to RGB as it was trained (images.mode).
        return Reference(f"id:{image_id}", image_id, lambda: load_as_stored(path))

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        names = body.get("models", [body["model"]] if "model" in body else [])
        if not isinstance(names, list) or not 1 <= len(names) <= MAX_MODELS_PER_QUERY:
            raise BrowseError(f"models must be a list of 1 to {MAX_MODELS_PER_QUERY} model names")
        for name in names:
            run.models.known(name)  # every name checked before anything loads
        text = check_text(body.get("text"))
        k = body.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise BrowseError(f"k must be a whole number from 1 to {MAX_K}")
        target = body.get("target_id")
        if target is not None and not isinstance(target, str):
            raise BrowseError("target_id must be an image id (a string)")
        reference = reference_of(body.get("reference"))
        loaded = [run.models.get(n) for n in names]
        return {
            "text": text,
            "reference": reference.label,
            "k": k,
            "results": run_query(loaded, reference, text, k, target),
        }

    async def search(request: Request) -> Response:
        raw = await read_body(request, MAX_JSON_BYTES, "query")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BrowseError("the query is not JSON") from None
        if not isinstance(body, dict):
            raise BrowseError("the query must be a JSON object")
        return JSONResponse(await asyncio.get_running_loop().run_in_executor(model_thread, answer, body))

    async def refused(request: Request, exc: BrowseError) -> Response:
        return error(exc.message, exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(
            exc.detail if exc.status_code != 404 else f"no such page: {request.url.path[:200]}", exc.status_code
        )

    async def crashed(request: Request, exc: Exception) -> Response:
        # Logged here with its traceback; the browser gets a message, and the server keeps serving.
        log.exception("browse: %s %s failed", request.method, request.url.path)
        return error(f"internal error ({type(exc).__name__}); the server log has the details", 500)

    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/meta", meta),
        Route("/api/triplets", triplets),
        Route("/api/images", images),
        Route("/api/leakage", leakage),
        Route("/image", image),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/search", search, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={BrowseError: refused, HTTPException: http_error, Exception: crashed},
    )
