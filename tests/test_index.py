"""Index build / resume / verification, engines on a real index, and the index + search CLI,
on a tiny checkpoint trained in the fixture."""

import json
import shutil

import faiss  # noqa: E402,F401  (dqecir[index]: a missing install fails here, never skips)
import numpy as np
import pytest
import torch
from bad_images import runtime_error_avif, strip_png

import dqecir.search.build as index_mod
from dqecir.checkpoint import load_checkpoint, save_checkpoint
from dqecir.cli import main
from dqecir.data.images import load_tensor
from dqecir.errors import CheckpointError, DataError, QueryError
from dqecir.files import file_sha256
from dqecir.models.cir import load_model
from dqecir.search import ExactEngine, Searcher, build_index, list_images, load_index


@pytest.fixture(scope="module")
def trained(tiny_trained):
    """(checkpoint, images folder) for a tiny model with attribute weights."""
    return tiny_trained


@pytest.fixture(scope="module")
def built(trained, tmp_path_factory):
    ck, images = trained
    out = tmp_path_factory.mktemp("built") / "index"
    report = build_index(ck, images, out, chunk_size=64, progress=False)
    return report, out


def test_build_holds_every_image_with_the_models_tokens(trained, built):
    ck, images = trained
    report, out = built
    ids = list_images(images)
    assert ids == sorted(ids) and all(not i.startswith("/") for i in ids)
    index = load_index(out, checkpoint=ck)
    assert index.ids == ids and report.count == len(ids) and report.unreadable == []
    m = index.manifest
    assert m["dtype"] == "float16" and m["tokens"] == 2 and m["count"] == len(ids)
    assert m["model"]["attributes"] == ["color", "shape"] and "preprocess" in m
    assert set(m["files"]) == {"embeddings.npy", "ids.json"}
    assert not (out / "build").exists()
    model, _ = load_model(ck)
    pixels = torch.stack([load_tensor(images / i, model.backbone.preprocess) for i in ids[:5]])
    with torch.no_grad():
        want = model.gallery(model.backbone.image_features(pixels))
    got = torch.from_numpy(index.embeddings[:5].astype(np.float32))
    assert torch.allclose(got, want, atol=1e-3)


def test_unreadable_images_are_reported_not_dropped(trained, tmp_path, capsys):
    ck, images = trained
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(list_images(images)[:6]):
        shutil.copy(images / name, folder / ("sub" if i % 2 else "") / f"{i}.png")
    (folder / "notes.jpg").write_text("not an image")
    good = (folder / "0.png").read_bytes()
    (folder / "sub" / "truncated.PNG").write_bytes(good[: len(good) // 2])
    (folder / "readme.txt").write_text("ignored: not an image extension")
    (folder / "avif.png").write_bytes(runtime_error_avif())  # Pillow raises RuntimeError
    (folder / "strip.png").write_bytes(strip_png())  # 1 x 20000: absurd aspect ratio
    rc = main(
        [
            "index",
            "--checkpoint",
            str(ck),
            "--images",
            str(folder),
            "--out",
            str(tmp_path / "index"),
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["count"] == 6 and summary["unreadable"] == 4
    assert str(folder / "notes.jpg") in out.err and str(folder / "sub/truncated.PNG") in out.err
    assert "avif.png: file" in out.err and "RuntimeError" in out.err
    assert "strip.png: file" in out.err and "aspect ratio of 20000:1" in out.err
    index = load_index(tmp_path / "index")
    bad = {"notes.jpg", "sub/truncated.PNG", "avif.png", "strip.png"}
    assert {u["id"] for u in index.unreadable} == bad
    assert all(u["error"] for u in index.unreadable)
    assert len(index) == 6 and "sub/1.png" in index


def test_interrupted_build_resumes_without_redoing_chunks(trained, built, tmp_path, monkeypatch):
    ck, images = trained
    _, reference = built
    real = index_mod._embed_batch
    calls = {"n": 0}

    def failing(model, pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(model, pixels)

    monkeypatch.setattr(index_mod, "_embed_batch", failing)
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build_index(ck, images, out, chunk_size=64, batch_size=64, progress=False)
    assert not (out / "manifest.json").exists()
    with pytest.raises(CheckpointError, match="interrupted"):
        load_index(out)
    seen = []
    monkeypatch.setattr(index_mod, "_embed_batch", lambda m, p: seen.append(len(p)) or real(m, p))
    report = build_index(ck, images, out, chunk_size=64, batch_size=64, progress=False)
    assert report.reused == 128 and report.computed == report.count - 128
    assert sum(seen) == report.computed
    a, b = load_index(out), load_index(reference)
    assert a.ids == b.ids and np.array_equal(a.embeddings, b.embeddings)


def test_corrupted_or_truncated_files_are_refused(built, tmp_path):
    _, src = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    emb = out / "embeddings.npy"
    data = bytearray(emb.read_bytes())
    data[-3] ^= 0xFF
    emb.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="embeddings.npy is corrupted"):
        load_index(out)
    load_index(out, verify=False)  # sizes still match: only the checksum can tell
    emb.write_bytes(bytes(data[:-10]))
    with pytest.raises(CheckpointError, match="truncated"):
        load_index(out, verify=False)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json is unreadable"):
        load_index(out)


MANIFEST_EDITS = [
    ("files", {}, "field 'files' must be an object with the bytes and sha256"),  # was accepted
    ("files", [], "field 'files' must be"),
    ("count", "many", "field 'count' must be an integer >= 0"),
    ("dim", None, "field 'dim' must be a positive integer"),
    ("tokens", 2.5, "field 'tokens' must be a positive integer"),
    ("dtype", "int8", "field 'dtype' must be one of"),
    ("checkpoint", "best.safetensors", "field 'checkpoint' must be an object"),
    ("images_root", 7, "field 'images_root' must be a folder path"),
    ("preprocess", [], "field 'preprocess' must be an object"),
    ("unreadable", {"x": 1}, "field 'unreadable' must be a list"),
    ("version", "1", "field 'version' must be an integer"),
]


@pytest.mark.parametrize(("field", "value", "message"), MANIFEST_EDITS)
def test_wrongly_typed_manifest_fields_are_clear_errors(
    built, trained, tmp_path, capsys, field, value, message
):
    """search and serve open the index the same way: each bad field is named, never a
    traceback; an empty ``files`` no longer switches the integrity checks off."""
    _, src = built
    _, images = trained
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest[field] = value
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        load_index(out)
    ref = sorted(images.glob("test1/*.png"))[0]
    argv = ["search", "--index", str(out), "--image", str(ref), "--text", "make it red"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and str(out) in err and "Traceback" not in err
    from dqecir.serve.app import create_app

    with pytest.raises(CheckpointError, match=message):
        create_app(out)  # what `dqecir serve` runs first


def test_broken_ids_file_is_a_clear_error(built, tmp_path):
    _, src = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    (out / "ids.json").write_text("[" * 50_000 + "]" * 50_000)
    manifest = json.loads((out / "manifest.json").read_text())  # a consistent manifest
    manifest["files"]["ids.json"] = {
        "bytes": (out / "ids.json").stat().st_size,
        "sha256": file_sha256(out / "ids.json"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="ids.json is unreadable: nested too deeply"):
        load_index(out)


def test_another_checkpoint_is_refused(trained, built, tmp_path):
    ck, _ = trained
    _, out = built
    c = load_checkpoint(ck)
    state = {k: v + 0.01 for k, v in c.model_state.items()}
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, model_state=state, meta={k: c.meta[k] for k in ("config", "preprocess")})
    with pytest.raises(CheckpointError, match="built with checkpoint"):
        load_index(out, checkpoint=other)
    with pytest.raises(CheckpointError, match="rebuild the index"):
        Searcher.open(out, checkpoint=other)


def test_existing_index_is_kept_or_refused(trained, built):
    ck, images = trained
    _, out = built
    again = build_index(ck, images, out, progress=False)
    assert again.computed == 0 and again.count == len(load_index(out))
    with pytest.raises(CheckpointError, match="already exists"):
        build_index(ck, images, out, dtype="float32", progress=False)


def test_empty_folder_is_an_error(trained, tmp_path):
    with pytest.raises(DataError, match="no images"):
        build_index(trained[0], tmp_path, tmp_path / "index", progress=False)


def test_faiss_engines_on_the_real_index(built):
    _, out = built
    index = load_index(out)
    g = torch.from_numpy(index.embeddings.astype(np.float32))
    q = torch.nn.functional.normalize(g[::7, 0] + 0.3 * g[3::7, 1][: len(g[::7])], dim=-1)
    s0, i0 = ExactEngine(index.embeddings).search(q, 10)
    searcher_flat = Searcher.open(out, engine="flat")
    s1, i1 = searcher_flat.engine.search(q, 10)
    assert torch.allclose(s0, s1, atol=1e-5)
    assert (i0 == i1).float().mean() > 0.99  # equal up to exact ties
    _, ih = Searcher.open(out, engine="hnsw").engine.search(q, 10)
    recall = sum(len(set(a) & set(b)) for a, b in zip(i0.tolist(), ih.tolist(), strict=True))
    assert recall / i0.numel() >= 0.95


def test_search_cli_json_and_text(trained, built, capsys):
    _, images = trained
    _, out = built
    ref = sorted(images.glob("test1/*.png"))[0]
    assert (
        main(
            [
                "search",
                "--index",
                str(out),
                "--image",
                str(ref),
                "--text",
                "make it red",
                "-k",
                "5",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert len(res["results"]) == 5 and res["query"]["excluded"] == [f"test1/{ref.name}"]
    assert all(r["id"] != f"test1/{ref.name}" for r in res["results"])
    scores = [r["score"] for r in res["results"]]
    assert scores == sorted(scores, reverse=True)
    assert set(res["relevance"]) == {"color", "shape", "other"}
    assert (
        main(
            [
                "search",
                "--index",
                str(out),
                "--image",
                f"test1/{ref.name}",
                "--text",
                "make it red",
                "-k",
                "3",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 5 and text[0].split()[0] == "1" and "attribute relevance" in text[-2]
    assert text[-1].startswith("word effects (score drop without the word): make ")


@pytest.mark.parametrize(
    ("text", "k", "message"),
    [
        ("", "5", "text is empty"),
        ("   ", "5", "text is empty"),
        ("make it red", "0", "k must be at least 1, got 0"),
        ("make it red", "-1", "k must be at least 1, got -1"),
        ("make it \udcff red", "5", "not valid UTF-8"),  # how argv carries invalid bytes
    ],
)
def test_search_cli_refuses_what_the_api_refuses(built, trained, capsys, text, k, message):
    _, images = trained
    _, out = built
    ref = sorted(images.glob("test1/*.png"))[0]
    argv = ["search", "--index", str(out), "--image", str(ref), "--text", text, "-k", k]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_searcher_query_takes_a_file_or_an_id_and_leaves_out_the_reference(
    trained, built, tmp_path
):
    _, images = trained
    _, out = built
    searcher = Searcher.open(out)
    ref = searcher.index.ids[3]
    by_id = searcher.query("make it red", 5, image_id=ref)
    by_file = searcher.query("make it red", 5, file=images / ref)
    assert by_id.excluded == by_file.excluded == (ref,)
    assert [h.id for h in by_id.hits] == [h.id for h in by_file.hits]
    assert ref not in {h.id for h in by_id.hits} and len(by_id.hits) == 5
    n = len(searcher.index)  # the whole index: the reference must rank somewhere
    kept = searcher.query("make it red", n, image_id=ref, keep_reference=True)
    assert kept.excluded == () and ref in {h.id for h in kept.hits} and len(kept.hits) == n
    left_out = searcher.query("make it red", n, image_id=ref)
    assert len(left_out.hits) == n - 1 and ref not in {h.id for h in left_out.hits}
    outside = tmp_path / "copy.png"
    shutil.copy(images / ref, outside)  # same pixels, not an index image: nothing left out
    assert searcher.query("make it red", 5, file=outside).excluded == ()
    for kw in ({}, {"file": outside, "image_id": ref}):
        with pytest.raises(QueryError, match="exactly one reference"):
            searcher.query("make it red", 5, **kw)
    with pytest.raises(QueryError, match="no image"):
        searcher.query("make it red", 5, image_id="nope.png")


@pytest.mark.parametrize("old", ["dqecir.index", "dqecir.engines"])
def test_old_import_paths_still_work_for_one_release(old, monkeypatch):
    import importlib
    import sys

    import dqecir.search as search

    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match="import from dqecir.search"):
        module = importlib.import_module(old)
    assert module.Searcher is search.Searcher and module.build_index is search.build_index
    assert module.load_index is search.load_index and module.make_engine is search.make_engine
