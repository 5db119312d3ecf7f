"""HTTP API and web page over a :class:`dqecir.engines.Searcher`.

Endpoints:
    GET  /                      the page (static/index.html)
    GET  /healthz               liveness + what is loaded
    GET  /api/examples?n=12     a few index image ids to pick a reference from
    GET  /api/images/{id}       JPEG thumbnail of an index image (ids of the index only)
    POST /api/search            multipart: ``image`` (file) or ``image_id``, ``text``, ``k``

Limits (:class:`Limits`): request body size (413, checked on Content-Length and while reading),
image pixels (decompression bombs), unreadable / truncated / non-image uploads (400, with the
reason), text length, empty text and ``k`` (422). CPU-heavy endpoints are plain ``def``, so
FastAPI runs them in its thread pool and the event loop keeps serving.
"""

from __future__ import annotations

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

from dqecir.data.images import load_image, to_tensor
from dqecir.engines import FaissOptions, Searcher
from dqecir.errors import DataError

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 10 << 20
    """Whole request body (the upload plus the form fields)."""
    max_pixels: int = 40_000_000
    """Uploaded images above this many pixels are refused before decoding."""
    max_text_chars: int = 300
    max_k: int = 100
    thumb_size: int = 256
    thumb_cache: int = 2048


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413: at once when
    Content-Length says so, else as soon as the streamed body passes the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _json(send, 413, _BodyTooLarge(self.max_bytes).detail)
            return
        seen, started = 0, False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
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
        except _BodyTooLarge as e:
            if not started:
                await _json(send, 413, e.detail)


async def _json(send: Any, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}, status_code=status).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
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
    options: FaissOptions | None = None,
    searcher: Searcher | None = None,
) -> FastAPI:
    """The app over the index in ``index_dir`` (or over an already open ``searcher``)."""
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
    app = FastAPI(title="DQE-CIR search", docs_url="/api/docs", redoc_url=None)
    app.state.searcher, app.state.limits = searcher, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
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
    ) -> dict:
        start = time.perf_counter()
        _check_query(text, k, image_id, image, limits)
        pixels, exclude, name = _reference(searcher, image_id, image, limits)
        result = searcher.search(pixels, text, k, exclude=exclude)
        return {
            "query": {"image_id": image_id, "upload": name, "text": text, "k": k},
            "results": [
                {"rank": h.rank, "id": h.id, "score": h.score, "url": _url(h.id)}
                for h in result.hits
            ],
            "relevance": result.relevance,
            "took_ms": round(1000 * (time.perf_counter() - start), 1),
        }


def _url(image_id: str) -> str:
    return "/api/images/" + quote(image_id)


def _check_query(
    text: str, k: int, image_id: str | None, image: UploadFile | None, limits: Limits
) -> None:
    if not text.strip():
        raise HTTPException(422, "text is empty: describe the change you want")
    if len(text) > limits.max_text_chars:
        raise HTTPException(
            422, f"text has {len(text)} characters, the limit is {limits.max_text_chars}"
        )
    if not 1 <= k <= limits.max_k:
        raise HTTPException(422, f"k must be between 1 and {limits.max_k}, got {k}")
    has_upload = image is not None and bool(image.filename or image.size)
    if has_upload == bool(image_id):
        raise HTTPException(422, "give exactly one reference: an image file or an image_id")


def _reference(
    searcher: Searcher, image_id: str | None, upload: UploadFile | None, limits: Limits
) -> tuple[Any, tuple[str, ...], str | None]:
    """Preprocessed reference pixels, the ids to leave out of the results, the upload name."""
    pre = searcher.model.backbone.preprocess
    if image_id:
        if image_id not in searcher.index:
            raise HTTPException(404, f"no image {image_id!r} in the index")
        try:
            img = load_image(searcher.index.path_of(image_id))
        except DataError as e:
            raise HTTPException(500, f"index image {image_id!r} is unreadable: {e}") from e
        return to_tensor(img, pre), (image_id,), None
    assert upload is not None
    name = upload.filename or "upload"
    return to_tensor(_decode_upload(upload, name, limits), pre), (), name


def _decode_upload(upload: UploadFile, name: str, limits: Limits) -> Image.Image:
    """Decode through :func:`dqecir.data.images.load_image` (the same checks as every other
    image: size limit, truncation, format), from a private temporary file."""
    data = upload.file.read(limits.max_body_bytes + 1)
    if not data:
        raise HTTPException(400, f"upload {name!r} is empty")
    with tempfile.TemporaryDirectory(prefix="dqecir-upload-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(data)
        try:
            return load_image(path, max_pixels=limits.max_pixels)
        except DataError as e:
            reason = str(e).replace(f"file {path}: ", "").replace(str(path), "the upload")
            raise HTTPException(400, f"upload {name!r} is not a usable image: {reason}") from e


def _thumbnail(searcher: Searcher, image_id: str, size: int) -> bytes:
    try:
        img = load_image(searcher.index.path_of(image_id))
    except DataError as e:
        raise HTTPException(404, f"index image {image_id!r} is unreadable: {e}") from e
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
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(index_dir, checkpoint=checkpoint, engine=engine, device=device, limits=limits)
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
