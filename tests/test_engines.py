"""Search engines on random galleries: exact vs a naive reference, faiss engines vs exact."""

import dataclasses
import sys

import faiss  # noqa: E402,F401  (dqecir[index]: a missing install fails here, never skips)
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dqecir.registry import ENGINES
from dqecir.search import (
    ExactEngine,
    ExactOptions,
    FaissEngine,
    FaissOptions,
    MissingDependencyError,
    make_engine,
)
from dqecir.similarity import similarity


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """faiss' OpenMP threads spin on a loaded 2-core machine (IVF training: 0.02 s with one
    thread, 5 s with two); tests run it single-threaded and restore the setting."""
    try:
        import faiss
    except ImportError:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _gallery(n: int, nt: int, d: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    g = torch.randn(n, nt, d, generator=torch.Generator().manual_seed(seed))
    return F.normalize(g, dim=-1).numpy().astype(dtype)


def _queries(q: int, d: int, seed: int = 1) -> torch.Tensor:
    return F.normalize(torch.randn(q, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _naive(g: np.ndarray, q: torch.Tensor, k: int):
    s = similarity(q, torch.from_numpy(g.astype(np.float32)))
    return s.topk(k, dim=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("nt", [1, 3])
def test_exact_matches_naive_across_chunks(dtype, nt):
    g, q = _gallery(257, nt, 16, dtype), _queries(5, 16)
    want_s, want_i = _naive(g, q, 7)
    # tiny blocks (down to one image per block): many blocks, each with its own top-k
    for block_bytes in (64, 1000, 4 << 20):
        s, i = ExactEngine(g, block_bytes=block_bytes).search(q, 7)
        assert s.dtype == torch.float32 and i.dtype == torch.int64
        assert torch.allclose(s, want_s, atol=1e-6)
        assert torch.equal(i, want_i)


@pytest.mark.parametrize("nt", [1, 3])
def test_exact_float16_single_query_path_and_its_fallback(nt):
    g, q = _gallery(3000, nt, 32, np.float16), _queries(6, 32)
    want_s, want_i = _naive(g, q, 10)
    eng = ExactEngine(g, block_bytes=4096)  # several float16 blocks
    for r in range(len(q)):
        s, i = eng.search(q[r : r + 1], 10)
        assert torch.equal(i, want_i[r : r + 1])
        assert torch.allclose(s, want_s[r : r + 1], atol=1e-6)
    assert eng.fallbacks == 0
    # near-duplicates: float16 rounding cannot separate them, the upcast scan answers
    base = torch.from_numpy(g[:1].astype(np.float32))
    dup = F.normalize(base + 1e-4 * torch.randn(2000, nt, 32), dim=-1).numpy().astype(np.float16)
    eng = ExactEngine(dup, block_bytes=4096)
    s, i = eng.search(q[:1], 10)
    want_s, want_i = _naive(dup, q[:1], 10)
    assert eng.fallbacks == 1 and torch.allclose(s, want_s, atol=1e-6)
    assert torch.equal(i, want_i)


def test_exact_clips_k_and_accepts_one_query_vector():
    g = _gallery(4, 1, 8)
    s, i = ExactEngine(g).search(_queries(1, 8)[0], 10)
    assert s.shape == (1, 4) and sorted(i[0].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="queries must be"):
        ExactEngine(g).search(torch.zeros(2, 5), 3)


@pytest.mark.parametrize("nt", [1, 4])
def test_faiss_flat_equals_exact(nt):
    g, q = _gallery(600, nt, 32, np.float16), _queries(8, 32)
    s0, i0 = ExactEngine(g).search(q, 10)
    s1, i1 = FaissEngine(g, "flat").search(q, 10)
    assert torch.allclose(s0, s1, atol=1e-5)
    assert torch.equal(i0, i1)


def _recall(exact: torch.Tensor, approx: torch.Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(exact.tolist(), approx.tolist(), strict=True))
    return hits / exact.numel()


@pytest.mark.parametrize("nt", [1, 4])
def test_hnsw_recall(nt):
    g, q = _gallery(1000, nt, 32), _queries(20, 32)
    _, i0 = ExactEngine(g).search(q, 10)
    s, ih = FaissEngine(g, "hnsw").search(q, 10)
    assert _recall(i0, ih) >= 0.95
    assert torch.allclose(s, ExactEngine(g).rescore(q, ih), atol=1e-6)  # scores are exact


def test_ivfpq_recall_and_exact_rescoring():
    g, q = _gallery(1000, 1, 32), _queries(20, 32)
    _, i0 = ExactEngine(g).search(q, 10)
    s, ii = FaissEngine(g, "ivfpq", FaissOptions(nprobe=64, pq_m=8)).search(q, 10)
    assert _recall(i0, ii) >= 0.6  # PQ codes are coarse on random data
    valid = ii >= 0
    assert valid.any()
    assert torch.allclose(s[valid], ExactEngine(g).rescore(q, ii.clamp(min=0))[valid], atol=1e-6)


def test_make_engine_names():
    g = _gallery(50, 1, 8)
    assert make_engine("exact", g).name == "exact"
    assert make_engine("hnsw", g).name == "hnsw"
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("annoy", g)


def test_missing_faiss_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'dqecir\[index\]'"):
        FaissEngine(_gallery(10, 1, 8), "flat")


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_registered_engine_builds_from_its_options(name):
    """The test to copy for a new engine (docs/extending.md, "Search engine"): it registers a
    builder and an options dataclass, and its top results on a random gallery are exact's."""
    spec = ENGINES.get(name)
    assert spec.name == name and dataclasses.is_dataclass(spec.options)
    if spec.needs_index:  # qdrant: built over a loaded index, see test_qdrant.py
        with pytest.raises(ValueError, match="needs the loaded index"):
            make_engine(name, _gallery(10, 1, 8), spec.options())
        return
    g, q = _gallery(300, 2, 16), _queries(4, 16)
    engine = make_engine(name, g, spec.options())
    assert engine.name == name and len(engine) == 300
    s, i = engine.search(q, 5)
    want_s, want_i = _naive(g, q, 5)
    assert s.shape == i.shape == (4, 5)
    # approximate engines may miss a neighbour; what they return is scored exactly
    found = i >= 0
    assert torch.allclose(s[found], ExactEngine(g).rescore(q, i.clamp(min=0))[found], atol=1e-5)
    floor = {"exact": 1.0, "flat": 1.0, "hnsw": 0.8}.get(name, 0.2)  # IVF-PQ codes are coarse
    assert _recall(want_i, i) >= floor


def test_engine_options_of_another_engine_are_refused():
    with pytest.raises(ValueError, match="takes FaissOptions, not ExactOptions"):
        make_engine("hnsw", _gallery(10, 1, 8), ExactOptions())
