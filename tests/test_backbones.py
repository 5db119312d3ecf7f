"""Every registered backbone against the contract (docs/extending.md, "Backbone").

``lite`` runs its real frozen towers (EfficientNet-Lite0, MiniLM-L6 from their packages);
``blip2`` runs the real ``transformers`` model class on a tiny random folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dqecir.errors import DataError
from dqecir.models.backbones.base import Backbone
from dqecir.models.backbones.blip2 import check_model_dir, save_random_blip2
from dqecir.models.backbones.tiny import masked_mean
from dqecir.registry import Registry, UnknownNameError, create_backbone, list_backbones
from dqecir.similarity import similarity

TEXTS = ["make it red", "has longer sleeves and a round collar, not blue"]


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_blip2(tmp_path_factory.mktemp("blip2-tiny"))


# (case id, registry name, kwargs); kwargs may name the blip2 folder through "{blip2}"
CASES = [
    ("tiny", "tiny", {}),
    ("lite-qformer", "lite", {"fusion": "qformer"}),
    ("lite-combiner", "lite", {"fusion": "combiner"}),
    ("lite-sum", "lite", {"fusion": "sum"}),
    ("lite-qformer-skip", "lite", {"fusion": "qformer", "width": 64, "image_skip": True}),
    (
        "lite-qformer-text",
        "lite",
        {
            "fusion": "qformer",
            "width": 64,
            "text_skip": True,
            "text_layers": 1,
            "token_dropout": 0.2,
            "h_from": "text",
        },
    ),
    ("blip2", "blip2", {"model_dir": "{blip2}"}),
]


def test_every_registered_backbone_is_tested() -> None:
    assert {name for _, name, _ in CASES} == set(list_backbones())


def _build(name: str, kwargs: dict, blip2_dir: Path) -> Backbone:
    kw = {k: str(blip2_dir) if v == "{blip2}" else v for k, v in kwargs.items()}
    return create_backbone(name, **kw)


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request: pytest.FixtureRequest, blip2_dir: Path) -> tuple[str, Backbone]:
    _, name, kwargs = request.param
    return name, _build(name, kwargs, blip2_dir)


def _inputs(bb: Backbone) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    s = bb.preprocess.image_size
    pixels = torch.randn(2, 3, s, s, generator=gen)
    return bb.image_features(pixels), bb.text_features(TEXTS)


def _unit(x: torch.Tensor) -> bool:
    return torch.allclose(x.float().norm(dim=-1), torch.ones(()), atol=1e-3)


def test_shapes_dtypes_norms(case: tuple[str, Backbone]) -> None:
    _, bb = case
    bb.eval()
    img, txt = _inputs(bb)
    assert img.shape[0] == 2 and not img.requires_grad
    assert all(v.shape[0] == 2 for v in txt.values())
    g = bb.encode_gallery(img)
    q, h = bb.encode_query(img, txt)
    assert g.shape == (2, bb.num_tokens, bb.dim) and g.dtype == torch.float32
    assert q.shape == (2, bb.dim) and h.shape == (2, bb.hidden_dim)
    assert _unit(g) and _unit(q)
    assert all(torch.isfinite(t).all() for t in (g, q, h))
    assert similarity(q, g).shape == (2, 2)
    json.dumps(bb.config())  # plain values only
    assert isinstance(bb.cache_key(), str) and bb.cache_key() == bb.cache_key()


def test_gradients_reach_trainable_only(case: tuple[str, Backbone]) -> None:
    _, bb = case
    bb.train()
    assert all(not m.training for m in bb.frozen_modules())
    bb.zero_grad(set_to_none=True)
    img, txt = _inputs(bb)
    g = bb.encode_gallery(img)
    q, h = bb.encode_query(img, txt)
    gen = torch.Generator().manual_seed(1)
    loss = (
        (q * torch.randn(q.shape, generator=gen)).sum()
        + (g * torch.randn(g.shape, generator=gen)).sum()
        + (h * torch.randn(h.shape, generator=gen)).sum()
    )
    loss.backward()
    trainable = dict((n, p) for n, p in bb.named_parameters() if p.requires_grad)
    assert trainable
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient reaches {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    frozen_with_grad = [
        n for n, p in bb.named_parameters() if not p.requires_grad and p.grad is not None
    ]
    assert not frozen_with_grad
    assert {n for n, p in bb.named_parameters() if p.requires_grad} == set(
        bb.trainable_state_dict()
    )
    bb.zero_grad(set_to_none=True)
    bb.eval()


def test_trainable_state_round_trip(case: tuple[str, Backbone], tmp_path: Path) -> None:
    name, bb = case
    bb.eval()
    with torch.no_grad():  # move away from the init so a fresh build differs
        for p in bb.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_file(bb.trainable_state_dict(), str(tmp_path / "w.safetensors"))
    config = json.loads(json.dumps(bb.config()))
    rebuilt = create_backbone(name, **config).eval()
    img, txt = _inputs(bb)
    q0, h0 = bb.encode_query(img, txt)
    assert not torch.allclose(rebuilt.encode_query(img, txt)[0], q0)
    rebuilt.load_trainable_state_dict(load_file(str(tmp_path / "w.safetensors")))
    q1, h1 = rebuilt.encode_query(img, txt)
    assert torch.allclose(q0, q1, atol=1e-5) and torch.allclose(h0, h1, atol=1e-5)
    assert torch.allclose(bb.encode_gallery(img), rebuilt.encode_gallery(img), atol=1e-5)


def test_load_rejects_mismatched_weights(case: tuple[str, Backbone]) -> None:
    from dqecir.errors import CheckpointError

    _, bb = case
    sd = dict(bb.trainable_state_dict())
    first = next(iter(sd))
    with pytest.raises(CheckpointError, match="missing"):
        bb.load_trainable_state_dict({k: v for k, v in sd.items() if k != first})
    with pytest.raises(CheckpointError, match="shape"):
        bb.load_trainable_state_dict({**sd, first: torch.zeros(1, 2, 3)})


def test_bf16_autocast_forward(case: tuple[str, Backbone]) -> None:
    _, bb = case
    bb.train()
    img, txt = _inputs(bb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = bb.encode_gallery(img)
        q, h = bb.encode_query(img, txt)
        loss = (q[:, None] * g).sum() + h.float().pow(2).mean()
    loss.backward()
    assert g.shape == (2, bb.num_tokens, bb.dim) and q.shape == (2, bb.dim)
    assert all(torch.isfinite(t.float()).all() for t in (g, q, h))
    bb.zero_grad(set_to_none=True)
    bb.eval()


# ---- blip2 folder checks ------------------------------------------------------------
def test_blip2_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as e:
        create_backbone("blip2", model_dir=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "nowhere" in msg and "config.json" in msg and "Salesforce/blip2-itm-vit-g" in msg
    assert "huggingface-cli" in msg


def _copy_folder(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_blip2_wrong_folders(tmp_path: Path, blip2_dir: Path) -> None:
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(DataError, match="'bert', not 'blip-2'"):
        check_model_dir(bert)
    no_weights = _copy_folder(blip2_dir, tmp_path / "nw", skip=("model.safetensors",))
    with pytest.raises(DataError, match="no model weights"):
        check_model_dir(no_weights)
    no_tok = _copy_folder(blip2_dir, tmp_path / "nt", skip=("vocab.txt", "tokenizer.json"))
    with pytest.raises(DataError, match="no tokenizer"):
        check_model_dir(no_tok)
    captioning = _copy_folder(blip2_dir, tmp_path / "cap")
    cfg = json.loads((captioning / "config.json").read_text())
    cfg["qformer_config"]["use_qformer_text_input"] = False
    (captioning / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="use_qformer_text_input"):
        create_backbone("blip2", model_dir=str(captioning))


def test_blip2_takes_sizes_from_config(blip2_dir: Path) -> None:
    bb = create_backbone("blip2", model_dir=str(blip2_dir), max_text_len=12)
    cfg = json.loads((blip2_dir / "config.json").read_text())
    assert bb.num_tokens == cfg["num_query_tokens"] and bb.dim == cfg["image_text_hidden_size"]
    assert bb.text_features(TEXTS)["input_ids"].shape == (2, 12)
    assert bb.config()["max_text_len"] == 12
    assert (
        bb.text_cache_key() != create_backbone("blip2", model_dir=str(blip2_dir)).text_cache_key()
    )


# ---- registry -----------------------------------------------------------------------
def test_unknown_backbone_lists_known() -> None:
    with pytest.raises(UnknownNameError, match="known: blip2, lite, tiny"):
        create_backbone("nope")


def test_registry_rejects_duplicates() -> None:
    reg: Registry[object] = Registry("thing")
    reg.register("a")(dict)
    reg.register("a")(dict)  # same factory again: fine (re-import)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(list)
    assert reg.names() == ["a"] and reg.create("a", x=1) == {"x": 1}


def test_qformer_fusion_ignores_trailing_padding() -> None:
    from dqecir.models.backbones.lite import QFormerFusion

    torch.manual_seed(0)
    fusion = QFormerFusion(12, 10, 4, 8, 16, 3, 2, 2, 0.0).eval()
    img, text = torch.randn(2, 4, 12), torch.randn(2, 6, 10)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    q, h = fusion.query(img, text, mask)
    longer = torch.cat([text, torch.randn(2, 5, 10)], dim=1)
    q2, h2 = fusion.query(img, longer, torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], 1))
    assert torch.allclose(q, q2, atol=1e-5) and torch.allclose(h, h2, atol=1e-5)


def test_lite_image_only_baseline_is_the_frozen_reference() -> None:
    """The untrained reference baseline: no trainable weights, the query is the reference's own
    pooled frozen feature, so each image retrieves itself first."""
    bb = create_backbone("lite", fusion="image_only")
    assert bb.trainable_parameters() == []
    feats, texts = _inputs(bb)
    q, _ = bb.encode_query(feats, texts)
    g = bb.encode_gallery(feats)
    assert torch.allclose(q, g[:, 0], atol=1e-6)
    assert torch.allclose(q, torch.nn.functional.normalize(feats.float().mean(1), dim=-1))


def test_lite_image_tokens_run_channels_last_with_the_same_features() -> None:
    from dqecir.models.backbones.lite import efficientnet_tokens

    bb = create_backbone("lite", fusion="image_only")
    net = bb.image_tower
    px = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    layouts = []
    hook = net._conv_stem.register_forward_pre_hook(
        lambda _m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(px)))  # the same stage, row-major all through
        for block in net._blocks:
            x = block(x)
        want = x.flatten(2).transpose(1, 2)
        got = efficientnet_tokens(net, px, "blocks")
    hook.remove()
    assert layouts == [False, True]  # the row-major reference, then channels-last
    assert got.shape == want.shape == (3, 16, 320)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.equal(bb.image_features(px), got)


def test_blip2_random_folder_sees_images(blip2_dir: Path) -> None:
    """Different images must give different gallery tokens in the random test model."""
    bb = create_backbone("blip2", model_dir=str(blip2_dir))
    s = bb.preprocess.image_size
    feats = bb.image_features(torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1)))
    g = bb.encode_gallery(feats)
    assert (g[0] - g[1]).abs().max() > 1e-3


def test_lite_text_features_sorted_dynamic_padding_and_bf16() -> None:
    """Chunks sorted by length and padded to their own longest text give the fixed-length
    states (float32); the bf16 tower agrees to a cosine above 0.999; the states below a trained
    top layer plus that layer give the tower's last states."""
    from dqecir.models.backbones.base import tokenize_padded

    texts = ["x", "make it red please", "a pair of navy sneakers instead of the long coat", "ok"]
    fp32 = create_backbone("lite", fusion="combiner", text_dtype="float32").eval()
    enc = tokenize_padded(fp32.tokenizer, texts, fp32.max_text_len)
    with torch.no_grad():
        ref = fp32.text_tower(**enc).last_hidden_state
    feats = fp32.text_features(texts)
    mask = enc["attention_mask"].bool()
    assert torch.equal(feats["mask"], mask)
    assert (feats["tokens"] - ref)[mask].abs().max() < 1e-4
    assert feats["tokens"][~mask].abs().max() == 0
    bf16 = create_backbone("lite", fusion="combiner", text_dtype="bfloat16").eval()
    cos = torch.nn.functional.cosine_similarity(
        bf16.text_features(texts)["tokens"][mask], ref[mask]
    )
    assert cos.min() > 0.999
    top = create_backbone("lite", fusion="combiner", text_dtype="float32", text_layers=1).eval()
    assert top.text_cache_key() != fp32.text_cache_key() != bf16.text_cache_key()
    assert len(top.text_tower.encoder.layer) == len(fp32.text_tower.encoder.layer) - 1
    below = top.text_features(texts)
    with torch.no_grad():
        states, m = top._text_states(below["tokens"], below["mask"])
    w = states.shape[1]
    assert (states - ref[:, :w])[mask[:, :w]].abs().max() < 1e-4
    # a frozen top layer (a baseline sharing the cache) trains nothing and stays the tower's
    fixed = create_backbone(
        "lite", fusion="sum", text_dtype="float32", text_layers=1, text_trainable=False
    )
    fixed.train()
    assert not any(p.requires_grad for p in fixed.text_top.parameters())
    assert not fixed.text_top.training
    assert fixed.text_cache_key() == top.text_cache_key()


def test_lite_token_dropout_only_in_training_and_keeps_cls() -> None:
    bb = create_backbone("lite", fusion="combiner", token_dropout=0.5, text_dtype="float32")
    feats = bb.text_features(["a very long caption with many words in it to drop"] * 8)
    bb.train()
    torch.manual_seed(0)
    _, m_train = bb._text_states(feats["tokens"], feats["mask"])
    assert m_train[:, 0].all() and m_train.sum() < feats["mask"].sum()
    bb.eval()
    _, m_eval = bb._text_states(feats["tokens"], feats["mask"])
    assert torch.equal(m_eval, feats["mask"][:, : m_eval.shape[1]])
    with pytest.raises(ValueError, match="token_dropout"):
        create_backbone("lite", fusion="combiner", token_dropout=1.0)


def test_lite_text_dropout_sets_the_trained_minilm_layers_only() -> None:
    """``text_dropout`` is MiniLM's own dropout in the trained top layers (0.1 by default, as the
    tower ships); 0 makes a training forward of those layers deterministic."""
    default = create_backbone("lite", fusion="sum", text_dtype="float32", text_layers=1)
    drops = [m.p for m in default.text_top.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == 0.1 for p in drops)
    bb = create_backbone(
        "lite", fusion="sum", text_dtype="float32", text_layers=1, text_dropout=0.0
    )
    assert all(m.p == 0.0 for m in bb.text_top.modules() if isinstance(m, torch.nn.Dropout))
    assert bb.config()["text_dropout"] == 0.0
    feats = bb.text_features(["a red shirt with long sleeves", "make it blue"])
    bb.train()
    a = bb._text_states(feats["tokens"], feats["mask"])[0]
    b = bb._text_states(feats["tokens"], feats["mask"])[0]
    assert torch.equal(a, b)
    default.train()
    torch.manual_seed(0)
    c = default._text_states(feats["tokens"], feats["mask"])[0]
    assert not torch.allclose(a, c)  # 0.1 drops in training
    with pytest.raises(ValueError, match="text_dropout"):
        create_backbone("lite", fusion="sum", text_layers=1, text_dropout=1.0)


def test_lite_text_top_math_attention_agrees_with_the_default_kernel(monkeypatch) -> None:
    """With gradients on a CPU the trained MiniLM layers run PyTorch's math attention kernel
    (faster there); its states and gradients are the default kernel's to float rounding."""
    import contextlib

    from dqecir.models.backbones import lite

    with torch.no_grad():
        assert isinstance(lite._text_top_attention(torch.device("cpu")), contextlib.nullcontext)
    assert not isinstance(lite._text_top_attention(torch.device("cpu")), contextlib.nullcontext)
    frozen = lite._text_top_attention(torch.device("cpu"), trained=False)
    assert isinstance(frozen, contextlib.nullcontext)
    bb = create_backbone(
        "lite", fusion="sum", text_dtype="float32", text_layers=2, text_dropout=0.0
    ).train()
    feats = bb.text_features(["a red shirt", "the same dress but in green with long sleeves"])

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        bb.zero_grad()
        out = bb._text_states(feats["tokens"], feats["mask"])[0]
        out.pow(2).sum().backward()
        return out.detach(), bb.text_top[0].attention.self.query.weight.grad.clone()

    chosen, entered = lite._text_top_attention, []

    def spy(device: torch.device, trained: bool = True) -> contextlib.AbstractContextManager:
        ctx = chosen(device, trained)
        entered.append(not isinstance(ctx, contextlib.nullcontext))
        return ctx

    monkeypatch.setattr(lite, "_text_top_attention", spy)
    math_out, math_grad = run()
    assert entered == [True]  # training with gradients: the math kernel
    monkeypatch.setattr(lite, "_text_top_attention", lambda *a: contextlib.nullcontext())
    ref_out, ref_grad = run()
    assert torch.allclose(math_out, ref_out, atol=1e-4)
    assert torch.allclose(math_grad, ref_grad, rtol=1e-3, atol=1e-4)


def test_blip2_pickled_weights_are_refused_with_a_message(tmp_path: Path, blip2_dir: Path) -> None:
    """A pytorch_model.bin that unpickles code: torch's weights_only loader refuses it; that
    refusal is a clear DataError (it was a traceback), and the code never runs."""
    import os
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = _copy_folder(blip2_dir, tmp_path / "pickled", skip=("model.safetensors",))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(DataError, match="refused to load pytorch_model.bin") as e:
        create_backbone("blip2", model_dir=str(folder))
    assert str(folder) in str(e.value) and "safetensors" in str(e.value)
    assert not marker.exists()


def test_lite_text_pooled_caches_the_sentence_embedding_a_frozen_pooling_fusion_reads() -> None:
    """``text_pooled``: the text features also hold MiniLM's own sentence embedding (its top
    layers as shipped, mean-pooled). A frozen sum / combiner reads it instead of running those
    layers, with the same query; a model that trains them ignores it."""
    texts = ["a red shirt", "make it a sky blue ankle boot with laces please", "green"]
    frozen = create_backbone(
        "lite", fusion="sum", text_dtype="float32", text_layers=2, text_trainable=False,
        text_pooled=True,
    ).eval()  # fmt: skip
    plain = create_backbone(
        "lite", fusion="sum", text_dtype="float32", text_layers=2, text_trainable=False
    )
    assert frozen.text_cache_key() != plain.text_cache_key()  # another cache: another field
    assert "pooled" not in plain.text_features(texts)
    feats = frozen.text_features(texts)
    assert feats["pooled"].shape == (3, 384)
    states, mask = frozen._text_states(feats["tokens"], feats["mask"])
    assert torch.allclose(feats["pooled"], masked_mean(states, mask), atol=1e-4)
    image = torch.randn(3, 16, 320)
    with torch.no_grad():
        via_pooled = frozen.encode_query(image, feats)
        via_layers = frozen.encode_query(image, {k: feats[k] for k in ("tokens", "mask")})
    assert frozen._reads_pooled(feats)
    assert torch.allclose(via_pooled[0], via_layers[0], atol=1e-4)
    # a model whose top layers train reads the tokens, not the cached embedding
    trained = create_backbone(
        "lite", fusion="sum", text_dtype="float32", text_layers=2, text_pooled=True
    ).eval()
    f2 = trained.text_features(texts)
    assert not trained._reads_pooled(f2)
    with torch.no_grad():
        trained.text_top[0].output.dense.weight.add_(0.5)  # as training would move them
        moved = trained.encode_query(image, f2)[0]
        again = trained.encode_query(image, {k: f2[k] for k in ("tokens", "mask")})[0]
    assert torch.equal(moved, again)
    assert torch.allclose(trained.text_features(texts)["pooled"], f2["pooled"])  # tower's own
    assert not any(k.startswith("tower_top") for k in trained.trainable_state_dict())
    # token dropout to apply in training, or a fusion that reads every token: the layers run
    drop = create_backbone(
        "lite", fusion="sum", text_dtype="float32", text_layers=2, text_trainable=False,
        text_pooled=True, token_dropout=0.2,
    )  # fmt: skip
    assert not drop.train()._reads_pooled(feats) and drop.eval()._reads_pooled(feats)
    qf = create_backbone(
        "lite", fusion="qformer", width=64, text_dtype="float32", text_layers=2,
        text_trainable=False, text_pooled=True,
    ).eval()  # fmt: skip
    assert not qf._reads_pooled(feats)
    # the default bf16 fill: the same query to bf16 rounding
    bf16 = create_backbone(
        "lite", fusion="sum", text_layers=2, text_trainable=False, text_pooled=True
    ).eval()
    bf16.load_state_dict(frozen.state_dict())
    fb = bf16.text_features(texts)
    with torch.no_grad():
        a = bf16.encode_query(image, fb)[0]
        b = bf16.encode_query(image, {k: fb[k] for k in ("tokens", "mask")})[0]
    assert (a - b).abs().max() < 2e-2 and torch.cosine_similarity(a, b).min() > 0.999
