"""The Qdrant store (qdrant-client local mode): results equal the exact engine on the same
vectors, for image points and token points, with and without exact rescoring; and the
index -> search CLI with ``--store qdrant``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import qdrant_client  # noqa: E402,F401  (dqecir[qdrant]: a missing install fails, never skips)
import torch

from dqecir.cli import main
from dqecir.config import load_config
from dqecir.data.synthetic import make_benchmark
from dqecir.errors import DqecirError
from dqecir.search import ExactEngine, Index
from dqecir.search.engines.qdrant import (
    QdrantEngine,
    QdrantOptions,
    collection_name,
    open_qdrant,
    upload_to_qdrant,
)
from dqecir.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"


def _index(tmp_path: Path, n: int = 120, nt: int = 3, d: int = 16) -> Index:
    g = torch.Generator().manual_seed(nt)
    emb = torch.nn.functional.normalize(torch.randn(n, nt, d, generator=g), dim=-1)
    manifest = {
        "images_root": str(tmp_path),
        "tokens": nt,
        "dim": d,
        "files": {"embeddings.npy": {"sha256": f"{nt:064d}"}},
    }
    ids = [f"img/{i:04d}.png" for i in range(n)]
    return Index(tmp_path, manifest, ids, emb.numpy().astype(np.float16))


def _queries(d: int = 16, q: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.normalize(torch.randn(q, d, generator=g), dim=-1)


@pytest.mark.parametrize(
    ("nt", "points", "rescore"),
    [(3, "token", True), (3, "token", False), (3, "image", True), (1, "image", False)],
)
def test_qdrant_results_equal_the_exact_engine(tmp_path, nt, points, rescore):
    index = _index(tmp_path, nt=nt)
    # image points of multi-token images only propose candidates: fetch them all
    over = len(index) if points == "image" and nt > 1 else 4
    options = QdrantOptions(points=points, rescore=rescore, overfetch=over)
    client = open_qdrant(options)
    up = upload_to_qdrant(index, client, options)
    assert up["count"] == len(index) * (nt if points == "token" else 1)
    engine = QdrantEngine(client, up["collection"], index.embeddings, options)
    assert engine.points == ("token" if points == "token" else "image")
    q = _queries()
    want_s, want_i = ExactEngine(index.embeddings).search(q, 10)
    got_s, got_i = engine.search(q, 10)
    assert torch.equal(got_i, want_i)
    assert torch.allclose(got_s, want_s, atol=1e-5)
    # payload: path / id of the image; a second upload finds the collection complete
    point = client.retrieve(up["collection"], ids=[7 * (nt if points == "token" else 1)])[0]
    assert point.payload["id"] == index.ids[7] and point.payload["row"] == 7
    assert point.payload["path"] == str(tmp_path / index.ids[7])
    assert upload_to_qdrant(index, client, options)["uploaded"] == 0


def test_collection_of_another_index_is_refused(tmp_path):
    index = _index(tmp_path)
    options = QdrantOptions(collection="shared")
    client = open_qdrant(options)
    upload_to_qdrant(index, client, options)
    other = _index(tmp_path / "o", d=8)
    with pytest.raises(DqecirError, match="overwrite"):
        upload_to_qdrant(other, client, options)
    assert upload_to_qdrant(other, client, options, overwrite=True)["uploaded"] == len(other) * 3
    with pytest.raises(DqecirError, match="points"):
        QdrantEngine(client, "shared", index.embeddings[:50], options)
    with pytest.raises(DqecirError, match="no collection"):
        QdrantEngine(client, collection_name(index), index.embeddings, options)


def test_index_search_and_serve_commands_with_the_qdrant_store(tmp_path, capsys, monkeypatch):
    make_benchmark("shapes", tmp_path / "bench", seed=0, size="tiny")
    images = tmp_path / "bench" / "cirr"
    cfg = load_config(CONFIG, [f"data.root={images}", f"data.cache_dir={tmp_path / 'cache'}",
                               "train.epochs=1", "train.num_threads=1"])  # fmt: skip
    ck = train(cfg, tmp_path / "run")
    # local folder mode writes every point through SQLite: a few images keep the test fast
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(images.rglob("*.png"))[:24]:
        shutil.copy(path, folder / path.name)
    images = folder
    store = ["--store", "qdrant", "--url", str(tmp_path / "qdrant")]
    out = tmp_path / "index"
    assert main(["index", "--checkpoint", str(ck), "--images", str(images), "--out", str(out),
                 "--workers", "0", *store]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["qdrant"]["points"] == "token" and report["qdrant"]["uploaded"] > 0
    image = sorted(images.glob("*.png"))[3]
    query = ["search", "--index", str(out), "--image", str(image), "--text", "make it red",
             "-k", "8", "--json"]  # fmt: skip
    results = []
    for extra in ([], store):
        assert main([*query, *extra]) == 0
        results.append(json.loads(capsys.readouterr().out)["results"])
    assert [r["id"] for r in results[1]] == [r["id"] for r in results[0]]
    assert [r["score"] for r in results[1]] == pytest.approx([r["score"] for r in results[0]])
    # dqecir serve --store qdrant: the same options reach serve() (no bypass) and its app
    import dqecir.serve.app as app_mod

    seen = {}
    real_create = app_mod.create_app

    def capture(index_dir, **kw):
        seen.update(kw)
        return real_create(index_dir, **kw)

    monkeypatch.setattr(app_mod, "create_app", capture)
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(app=app))
    assert main(["serve", "--index", str(out), *store]) == 0
    assert seen["engine"] == "qdrant" and isinstance(seen["options"], QdrantOptions)
    assert seen["options"].url == str(tmp_path / "qdrant")
    assert seen["app"].state.searcher.engine.name == "qdrant"
