"""HTTP API and web page over a :class:`dqecir.search.Searcher`.

Endpoints:
    GET  /                      the page (static/index.html)
    GET  /healthz               liveness + what is loaded
    GET  /api/examples?n=12     a few index image ids to pick a reference from
    GET  /api/images/{id}       JPEG thumbnail of an index image (ids of the index only)
    POST /api/search            multipart: ``image`` (file) or ``image_id``, ``text``, ``k``,
                                ``word_effects`` (default true)

    GET  /api/openapi.json      the API description (no Swagger UI: it loads from a CDN)

Limits (:class:`Limits`): request body size (413, checked on Content-Length and while reading),
time to receive the body (408), image pixels (decompression bombs) and aspect ratio,
unreadable / truncated / non-image uploads (400, with the reason), text length, empty text and
``k`` (422). Every answer carries ``X-Content-Type-Options: nosniff``, a same-origin
Content-Security-Policy and ``X-Frame-Options: DENY``; error messages never show server
paths. CPU-heavy endpoints are plain ``def``, so FastAPI runs them in its thread pool and the
event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from dqecir.data.images import load_image
from dqecir.errors import DataError, QueryError
from dqecir.search import Searcher, check_query

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 10 << 20
    """Whole request body (the upload plus the form fields)."""
    body_timeout_s: float = 30.0
    """Time a client has to send the whole body; a stalled upload gets 408 and its connection
    is closed (it would otherwise hold a worker and a socket for ever)."""
    max_pixels: int = 40_000_000
    """Uploaded images above this many pixels are refused before decoding."""
    max_text_chars: int = 300
    max_k: int = 100
    thumb_size: int = 256
    thumb_cache: int = 2048


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class _BodyTooSlow(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s")


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413 (at once when
    Content-Length says so, else as soon as the streamed body passes the limit) and bodies
    not received within ``timeout_s`` of the first read with 408."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _json(send, 413, _BodyTooLarge(self.max_bytes).detail)
            return
        seen, started, deadline = 0, False, None
        loop = asyncio.get_running_loop()

        async def limited_receive() -> dict:
            nonlocal seen, deadline
            deadline = deadline or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _BodyTooSlow(self.timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)  # FastAPI turns it into a 413
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (_BodyTooLarge, _BodyTooSlow) as e:
            if not started:
                await _json(send, e.status_code, e.detail, close=True)


SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"content-security-policy": (
        b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
        b"style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'"
    ),
}
"""On every answer: no MIME sniffing (a thumbnail is never run as a script), nothing but the
page's own files (no inline script, no other origin; uploads preview as ``blob:`` URLs), never
framed."""


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS.items() if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


async def _json(send: Any, status: int, detail: str, close: bool = False) -> None:
    body = JSONResponse({"detail": detail}, status_code=status).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the rest of the body is never read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    index_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    engine: str = "exact",
    device: str = "cpu",
    limits: Limits | None = None,
    verify: bool = True,
    options: Any | None = None,
    searcher: Searcher | None = None,
) -> FastAPI:
    """The app over the index in ``index_dir`` (or over an already open ``searcher``), searched
    by the registered engine ``engine`` with ``options`` (its options dataclass, e.g.
    :class:`~dqecir.search.QdrantOptions`; None: its defaults)."""
    limits = limits or Limits()
    if searcher is None:
        searcher = Searcher.open(
            index_dir,
            checkpoint=checkpoint,
            engine=engine,
            device=device,
            verify=verify,
            options=options,
        )
    # No Swagger UI / ReDoc: FastAPI's load their scripts from a CDN, and the machines this
    # runs on are often offline. The OpenAPI description itself is served.
    app = FastAPI(
        title="DQE-CIR search", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json"
    )
    app.state.searcher, app.state.limits = searcher, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    app.add_middleware(SecurityHeaders)  # outermost: also on the 413 / 408 answers
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    thumbnail = lru_cache(maxsize=limits.thumb_cache)(
        lambda image_id: _thumbnail(searcher, image_id, limits.thumb_size)
    )
    _routes(app, searcher, limits, thumbnail)
    return app


def _routes(app: FastAPI, searcher: Searcher, limits: Limits, thumbnail: Any) -> None:
    index = searcher.index

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    def healthz() -> dict:
        return {
            "status": "ok",
            "images": len(index),
            "engine": searcher.engine.name,
            "attributes": searcher.attributes,
        }

    @app.get("/api/examples")
    def examples(n: Annotated[int, Query(ge=1, le=100)] = 12) -> dict:
        step = max(1, len(index) // n)
        ids = index.ids[::step][:n]
        return {
            "count": len(index),
            "attributes": searcher.attributes,
            "examples": [{"id": i, "url": _url(i)} for i in ids],
            "limits": {
                "max_text_chars": limits.max_text_chars,
                "max_k": limits.max_k,
                "max_body_bytes": limits.max_body_bytes,
            },
        }

    @app.get("/api/images/{image_id:path}")
    def image(image_id: str) -> Response:
        if image_id not in index:
            raise HTTPException(404, f"no image {image_id!r} in the index")
        return Response(
            thumbnail(image_id), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
        )

    @app.post("/api/search")
    def search(
        text: Annotated[str, Form()] = "",
        k: Annotated[int, Form()] = 10,
        image_id: Annotated[str | None, Form()] = None,
        image: Annotated[UploadFile | None, File()] = None,
        word_effects: Annotated[bool, Form()] = True,
    ) -> dict:
        start = time.perf_counter()
        _check_query(text, k, image_id, image, limits)
        name = (image.filename or "upload") if image is not None and not image_id else None
        result = _search(searcher, text, k, image_id, image, limits, word_effects)
        return {
            "query": {"image_id": image_id, "upload": name, "text": text, "k": k},
            "results": [
                {"rank": h.rank, "id": h.id, "score": h.score, "url": _url(h.id)}
                for h in result.hits
            ],
            "relevance": result.relevance,
            "word_effects": result.to_dict()["word_effects"],
            "took_ms": round(1000 * (time.perf_counter() - start), 1),
        }


def _url(image_id: str) -> str:
    return "/api/images/" + quote(image_id)


def _check_query(
    text: str, k: int, image_id: str | None, image: UploadFile | None, limits: Limits
) -> None:
    try:
        check_query(text, k, max_chars=limits.max_text_chars, max_k=limits.max_k)
    except QueryError as e:
        raise HTTPException(422, str(e)) from e
    has_upload = image is not None and bool(image.filename or image.size)
    if has_upload == bool(image_id):
        raise HTTPException(422, "give exactly one reference: an image file or an image_id")


def _search(
    searcher: Searcher,
    text: str,
    k: int,
    image_id: str | None,
    upload: UploadFile | None,
    limits: Limits,
    word_effects: bool,
) -> Any:
    """:meth:`Searcher.query` on an index id or an upload (written to a private temporary
    file, read with the same checks as every other image), its errors as HTTP answers that show
    no server path: an unknown id 404, an index image that can no longer be read 500, an
    upload that is no usable image 400."""
    if image_id:
        if image_id not in searcher.index:
            raise HTTPException(404, f"no image {image_id!r} in the index")
        try:
            return searcher.query(text, k, image_id=image_id, word_effects=word_effects)
        except DataError as e:
            raise _unreadable(searcher, image_id, e, 500) from e
    assert upload is not None
    name = upload.filename or "upload"
    data = upload.file.read(limits.max_body_bytes + 1)
    if not data:
        raise HTTPException(400, f"upload {name!r} is empty")
    with tempfile.TemporaryDirectory(prefix="dqecir-upload-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            return searcher.query(
                text, k, file=path, word_effects=word_effects, max_pixels=limits.max_pixels
            )
        except DataError as e:
            reason = e.reason.replace(str(path), "the upload")
            raise HTTPException(400, f"upload {name!r} is not a usable image: {reason}") from e


def _unreadable(searcher: Searcher, image_id: str, e: DataError, status: int) -> HTTPException:
    """The HTTP error ``status`` for an index image that can no longer be read (changed or gone
    since it was indexed), in words that show no server path."""
    reason = e.reason.replace(str(searcher.index.path_of(image_id)), image_id).replace(
        str(searcher.index.images_root), "<images>"
    )
    return HTTPException(status, f"index image {image_id!r} can no longer be read: {reason}")


def _thumbnail(searcher: Searcher, image_id: str, size: int) -> bytes:
    try:
        img = load_image(searcher.index.path_of(image_id))
    except DataError as e:
        raise _unreadable(searcher, image_id, e, 404) from e
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def serve(
    index_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    checkpoint: str | Path | None = None,
    engine: str = "exact",
    device: str = "cpu",
    limits: Limits | None = None,
    options: Any | None = None,
) -> None:
    """Run the app with uvicorn until interrupted (``engine`` and its ``options`` as in
    :func:`create_app`)."""
    import uvicorn

    app = create_app(
        index_dir, checkpoint=checkpoint, engine=engine, device=device, limits=limits,
        options=options,
    )  # fmt: skip
    log.info("serving %d images on http://%s:%d", len(app.state.searcher.index), host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")


class BackgroundServer:
    """A real uvicorn server for ``app`` on a thread (tests, notebooks)::

        with BackgroundServer(app) as url:
            httpx.get(url + "/healthz")

    ``port=0`` picks a free port; the URL is known once started.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
