"""HTTP API on a real uvicorn (127.0.0.1, free port): searches, thumbnails, every bad input,
and 16 concurrent searches answering like serial ones."""

import io
import shutil
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from bad_images import runtime_error_avif, strip_png
from PIL import Image

from dqecir.data.images import load_tensor
from dqecir.search import build_index
from dqecir.serve.app import BackgroundServer, Limits, create_app

LIMITS = Limits(
    max_body_bytes=200_000, max_pixels=1_000_000, max_text_chars=50, max_k=20, body_timeout_s=1.0
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_trained):
    root = tmp_path_factory.mktemp("serve")
    ck, bench = tiny_trained
    images = bench / "test1"
    build_index(ck, images, root / "index", progress=False)
    app = create_app(root / "index", limits=LIMITS)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app.state.searcher, images


def _png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A small PNG file that declares ``width x height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _search(client, text="make it red", k=5, image_id=None, upload=None, name="ref.png", **fields):
    data = {"text": text, "k": str(k), **fields}
    if image_id is not None:
        data["image_id"] = image_id
    files = {"image": (name, upload, "image/png")} if upload is not None else None
    return client.post("/api/search", data=data, files=files)


def test_health_page_examples_and_thumbnails(server):
    client, searcher, _ = server
    assert client.get("/healthz").json()["images"] == len(searcher.index)
    page = client.get("/")
    assert page.status_code == 200 and "DQE-CIR search" in page.text
    assert client.get("/static/app.js").status_code == 200
    ex = client.get("/api/examples", params={"n": 4}).json()
    assert len(ex["examples"]) == 4 and ex["attributes"] == ["color", "shape"]
    thumb = client.get(ex["examples"][0]["url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= LIMITS.thumb_size
    assert client.get("/api/images/nope.png").status_code == 404
    assert client.get("/api/images/../../etc/passwd").status_code == 404


def test_search_by_id_and_by_upload_match_the_library(server):
    client, searcher, images = server
    ref = searcher.index.ids[3]
    by_id = _search(client, image_id=ref)
    assert by_id.status_code == 200, by_id.text
    body = by_id.json()
    assert len(body["results"]) == 5 and all(r["id"] != ref for r in body["results"])
    assert set(body["relevance"]) == {"color", "shape", "other"}
    assert body["results"][0]["url"].startswith("/api/images/")
    effects = body["word_effects"]
    assert [(w["word"], w["start"], w["end"]) for w in effects] == [
        ("make", 0, 4), ("it", 5, 7), ("red", 8, 11)]  # fmt: skip
    hits = searcher.search(
        load_tensor(images / ref, searcher.model.backbone.preprocess), "make it red", 5,
        exclude=(ref,), word_effects=True,
    )  # fmt: skip
    assert [w["effect"] for w in effects] == pytest.approx([w.effect for w in hits.word_effects])
    off = _search(client, image_id=ref, word_effects="false").json()
    assert off["word_effects"] is None
    assert [r["id"] for r in off["results"]] == [r["id"] for r in body["results"]]
    assert [r["score"] for r in off["results"]] == pytest.approx(  # batched: last digits
        [r["score"] for r in body["results"]], abs=1e-5)  # fmt: skip
    up = _search(client, upload=(images / ref).read_bytes()).json()
    pixels = load_tensor(images / ref, searcher.model.backbone.preprocess)
    direct = searcher.search(pixels, "make it red", 5)
    assert [r["id"] for r in up["results"]] == [h.id for h in direct.hits]
    assert up["results"][0]["score"] == pytest.approx(direct.hits[0].score, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"upload": b"GIF89a not really"}, 400, "not a usable image"),
        ({"upload": _png()[:60]}, 400, "truncated"),
        ({"upload": _png_header_only(30_000, 30_000)}, 400, "decompression bomb"),
        ({"upload": _png((2000, 1000))}, 400, "above the limit of 1000000"),
        ({"upload": b""}, 400, "empty"),
        ({"upload": runtime_error_avif()}, 400, "RuntimeError"),  # was a bare 500
        ({"upload": strip_png()}, 400, "aspect ratio of 20000:1"),  # was 1.3 GB of canvas
        ({"upload": _png(), "text": "   "}, 422, "text is empty"),
        ({"upload": _png(), "text": ""}, 422, "text is empty"),
        ({"upload": _png(), "text": "x" * 51}, 422, "limit is 50"),
        ({"upload": _png(), "k": 0}, 422, "k must be between 1 and 20"),
        ({"upload": _png(), "k": 21}, 422, "k must be"),
        ({}, 422, "exactly one reference"),
        ({"upload": _png(), "image_id": "x.png"}, 422, "exactly one reference"),
        ({"image_id": "missing.png"}, 404, "no image"),
    ],
)
def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(server, kwargs, status, message):
    client, _, _ = server
    r = _search(client, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert "/tmp" not in r.json()["detail"] and "dqecir-upload" not in r.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_too_large_bodies_get_413(server):
    client, _, _ = server
    big = _png() + b"\0" * 300_000
    r = _search(client, upload=big)  # Content-Length says it at once
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        yield b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nred\r\n'
        for _ in range(40):
            yield b"a" * 10_000

    r = client.post(
        "/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 413
    assert client.get("/healthz").status_code == 200


def test_concurrent_searches_answer_like_serial_ones(server):
    client, searcher, images = server
    ids = searcher.index.ids[:8]
    texts = ["make it red", "turn it into a circle"]
    jobs = [(i, t) for i in ids for t in texts]
    assert len(jobs) == 16

    def run(job):
        r = _search(client, image_id=job[0], text=job[1], k=10)
        assert r.status_code == 200, r.text
        body = r.json()
        return [(x["id"], round(x["score"], 6)) for x in body["results"]], body["relevance"]

    serial = [run(j) for j in jobs]
    with ThreadPoolExecutor(16) as pool:
        parallel = list(pool.map(run, jobs))
    assert parallel == serial


def test_security_headers_on_every_answer_and_no_cdn(server):
    client, _, _ = server
    answers = [
        client.get("/"),
        client.get("/static/app.js"),
        client.get("/api/examples"),
        _search(client, text=""),  # 422
        _search(client, upload=_png() + b"\0" * 300_000),  # 413 from the middleware
    ]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert client.get("/api/docs").status_code == 404  # Swagger UI would load from a CDN
    spec = client.get("/api/openapi.json")
    assert spec.status_code == 200 and "/api/search" in spec.json()["paths"]
    page = client.get("/").text + client.get("/static/app.js").text
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere


def test_stalled_uploads_get_408_and_are_closed(server):
    """50 clients that announce a body and stop sending: each gets 408 once the body timeout
    (1 s here) has passed, and its connection is closed; the server keeps answering."""
    client, _, _ = server
    host, port = client.base_url.host, client.base_url.port
    head = (
        f"POST /api/search HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5000\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n"
    ).encode()
    socks = []
    for _ in range(50):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(head)
        socks.append(s)
    start = time.monotonic()
    assert client.get("/healthz").status_code == 200  # not blocked meanwhile
    for s in socks:
        data = b""
        while chunk := s.recv(4096):  # b"" once the server closes the connection
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 408"), data[:80]
        assert b"not received within 1 s" in data
    assert time.monotonic() - start < 10
    assert client.get("/healthz").status_code == 200


def test_unreadable_index_image_errors_show_no_server_path(tiny_trained, tmp_path):
    """An index image that went bad after indexing: the search by id and its thumbnail say
    so by id, without the server's folders."""
    ck, bench = tiny_trained
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted((bench / "test1").glob("*.png"))[:6]:
        shutil.copy(name, images / name.name)
    build_index(ck, images, tmp_path / "index", progress=False)
    victim = sorted(images.iterdir())[2]
    victim.write_bytes(b"overwritten since")
    app = create_app(tmp_path / "index")
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        r = _search(client, image_id=victim.name)
        assert r.status_code == 500
        thumb = client.get(f"/api/images/{victim.name}")
        assert thumb.status_code == 404
        for detail in (r.json()["detail"], thumb.json()["detail"]):
            assert f"index image {victim.name!r} can no longer be read" in detail
            assert str(tmp_path) not in detail and "/" not in detail.split(":", 1)[1], detail
        assert _search(client, image_id=sorted(images.iterdir())[0].name).status_code == 200
