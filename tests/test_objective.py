"""The DQE-CIR objective on the tiny backbone: named terms, weights, the in-batch mask and the
TRNS terms (a newcomer's new loss term gets its test here)."""

from dataclasses import replace

import pytest
import torch

from dqecir.config import LossConfig, ModelConfig
from dqecir.models.cir import build_model
from dqecir.objective import DQECIRObjective, ObjectiveBatch
from dqecir.similarity import similarity

B, K = 6, 3


def _model(aw: str = "gate"):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="tiny", attribute_weights=aw), LossConfig())


def _batch(model, negatives: bool = True) -> ObjectiveBatch:
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(B + B + B * K, 3, 32, 32, generator=g)
    feats = model.backbone.image_features(pixels)
    text = model.backbone.text_features([f"make it colour {i}" for i in range(B)])
    negs = torch.arange(B * K).view(B, K)
    negs[0, 2] = -1  # a slot mining could not fill
    return ObjectiveBatch(
        reference=feats[:B], text=text, target=feats[B : 2 * B],
        queries=torch.arange(B), targets=torch.tensor([10, 11, 12, 13, 14, 15]),
        labels=(torch.arange(B * 2).view(B, 2) % 2).float(),
        negatives=negs if negatives else None, negative_feats=feats[2 * B :] if negatives else None,
    )  # fmt: skip


def test_loss_is_the_weighted_sum_of_named_terms():
    model = _model()
    cfg = LossConfig(w_kl=1.0, w_rank=0.5, w_attr=0.25)
    gts = [[10 + i] for i in range(B)]
    terms = DQECIRObjective(cfg, gts, trns=True)(model, _batch(model))
    assert {"itc", "kl", "rank", "rank_active", "attr", "attr_bce", "loss"} <= set(terms)
    want = terms["itc"] + 1.0 * terms["kl"] + 0.5 * terms["rank"] + 0.25 * terms["attr"]
    assert torch.allclose(terms["loss"], want)
    terms["loss"].backward()
    assert model.aw.relevance.weight.grad is not None  # L_attr reaches the attribute head


def test_without_trns_or_before_mining_only_itc_and_attr():
    model = _model()
    cfg = LossConfig(w_kl=1.0, w_rank=0.5, w_attr=0.5)
    off = DQECIRObjective(cfg, [[10 + i] for i in range(B)], trns=False)
    assert not off.uses_negatives
    assert "kl" not in off(model, _batch(model)) and "rank" not in off(model, _batch(model))
    on = DQECIRObjective(cfg, [[10 + i] for i in range(B)], trns=True)
    assert on.uses_negatives and "kl" not in on(model, _batch(model, negatives=False))
    zero = DQECIRObjective(replace(cfg, w_kl=0.0, w_rank=0.0), [[1]] * B, trns=True)
    assert not zero.uses_negatives


def test_in_batch_mask_keeps_other_ground_truths_out_of_the_negatives():
    gts = [[10, 11], [11], [12, 10], [13], [14], [15]]
    obj = DQECIRObjective(LossConfig(mask_batch_gt=True), gts)
    mask = obj.in_batch_mask(torch.arange(B), torch.tensor([10, 11, 12, 13, 14, 15]))
    assert mask[0, 1] and mask[2, 0] and not mask[1, 0] and not mask[3, 4]
    assert bool(mask.diagonal().all())
    assert (
        DQECIRObjective(LossConfig(mask_batch_gt=False), gts).in_batch_mask(
            torch.arange(B), torch.arange(B)
        )
        is None
    )
    # masking a pair changes L_itc (a ground truth no longer pushed away)
    model = _model("none")
    batch = _batch(model, negatives=False)
    batch.targets = torch.tensor([10, 11, 12, 13, 14, 15])
    masked = obj(model, batch)["itc"]
    plain = DQECIRObjective(LossConfig(mask_batch_gt=False), gts)(model, batch)["itc"]
    assert masked.item() < plain.item()


def test_trns_terms_score_each_query_against_its_own_negatives():
    model = _model("none")
    batch = _batch(model)
    obj = DQECIRObjective(LossConfig(w_kl=0.0, w_rank=1.0, rank_margin=100.0), [[1]] * B, trns=True)
    terms = obj(model, batch)
    # margin 100 tau: every valid hinge is active, so rank = margin * tau - s_pos + mean s_neg
    q = model.query(batch.reference, batch.text)["q_star"].float()
    pos = similarity(q, model.gallery(batch.target).float()).diagonal()
    neg = similarity(
        q,
        model.gallery(batch.negative_feats)
        .float()
        .view(B, K, *model.gallery(batch.negative_feats).shape[1:]),
    )
    valid = batch.negatives >= 0
    tau = float(model.temperature())
    hinge = (100.0 * tau - pos.unsqueeze(1) + neg)[valid]
    assert float(terms["rank_active"]) == pytest.approx(1.0)
    assert float(terms["rank"]) == pytest.approx(float(hinge.mean()), rel=1e-5)


def _terms_and_grads(obj, model, batch):
    """The objective's terms on ``batch`` and the gradients of its loss, by parameter name."""
    model.zero_grad()
    terms = obj(model, batch)
    terms["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


def test_distinct_negatives_encoded_once_give_the_per_slot_terms_and_gradients():
    """The Trainer passes each distinct negative image once plus a slot index; terms and
    gradients must equal those of one encoded row per slot."""
    model = _model()
    model.eval()  # no dropout: both ways see the same network
    cfg = LossConfig(w_kl=1.0, w_rank=0.5, w_attr=0.25, kl_inbatch=True)
    obj = DQECIRObjective(cfg, [[10 + i] for i in range(B)], trns=True)
    per_slot = _batch(model)
    # negatives that repeat across queries, as mined from one pool
    per_slot.negatives = torch.tensor(
        [[0, 1, 2], [1, 2, 3], [0, 3, 3], [2, 2, 1], [4, 0, -1], [4, 1, 0]]
    )
    pool = per_slot.negative_feats[:5]
    per_slot.negative_feats = pool[per_slot.negatives.clamp(min=0).flatten()]
    distinct, slot = torch.unique(per_slot.negatives.clamp(min=0).flatten(), return_inverse=True)
    once = replace(per_slot, negative_feats=pool[distinct], negative_index=slot)
    assert len(once.negative_feats) == 5 < B * K

    t1, g1 = _terms_and_grads(obj, model, per_slot)
    t2, g2 = _terms_and_grads(obj, model, once)
    assert {"kl", "rank"} <= set(t1)
    for k in t1:
        assert torch.allclose(t1[k], t2[k], atol=1e-6), k
    assert g1.keys() == g2.keys() and g1
    for n in g1:
        assert torch.allclose(g1[n], g2[n], atol=1e-5), n


def test_negatives_without_gradient_give_the_same_terms_and_spare_only_the_gallery_path():
    """``trns.negative_grad: false`` encodes the negatives without gradient: the terms stay, the
    gradient of weights that only the query path uses stays, and that of the gallery encoding
    loses the negatives' share."""
    model = _model("subspace")
    model.eval()
    cfg = LossConfig(w_kl=1.0, w_rank=0.5, kl_inbatch=True)
    batch = _batch(model)

    def run(negative_grad: bool):
        gts = [[10 + i] for i in range(B)]
        obj = DQECIRObjective(cfg, gts, trns=True, negative_grad=negative_grad)
        return _terms_and_grads(obj, model, batch)

    t1, g1 = run(True)
    t2, g2 = run(False)
    for k in t1:
        assert torch.allclose(t1[k], t2[k], atol=1e-6), k
    model.zero_grad()
    model.gallery(batch.target).float().sum().backward()
    gallery_side = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert gallery_side and g1.keys() == g2.keys()
    query_only = set(g1) - gallery_side
    assert query_only
    for n in query_only:
        assert torch.allclose(g1[n], g2[n], atol=1e-6), n
    assert any(not torch.allclose(g1[n], g2[n], atol=1e-6) for n in gallery_side)


def test_relevance_held_fixed_under_trns_is_trained_by_itc_and_attr_only():
    """``trns.relevance_grad: false``: the TRNS terms keep their values, the relevance head gets
    exactly the gradient of L_itc + L_attr, and the gallery side the same gradient as before."""
    model = _model("subspace")
    model.eval()
    cfg = LossConfig(w_kl=1.0, w_rank=0.5, w_attr=0.25)
    gts = [[10 + i] for i in range(B)]
    batch = _batch(model)
    t1, g1 = _terms_and_grads(DQECIRObjective(cfg, gts, trns=True), model, batch)
    held = DQECIRObjective(cfg, gts, trns=True, relevance_grad=False)
    t2, g2 = _terms_and_grads(held, model, batch)
    no_trns = DQECIRObjective(replace(cfg, w_kl=0.0, w_rank=0.0), gts, trns=True)
    _, g0 = _terms_and_grads(no_trns, model, batch)
    assert {"kl", "rank"} <= set(t1)
    for k in t1:
        assert torch.allclose(t1[k], t2[k], atol=1e-6), k
    head = [n for n in g1 if n.startswith("aw.relevance.")]
    assert head
    for n in head:
        assert torch.allclose(g2[n], g0[n], atol=1e-6), n
    assert any(not torch.allclose(g1[n], g0[n], atol=1e-6) for n in head)
    model.zero_grad()
    model.gallery(batch.target).float().sum().backward()
    gallery_side = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert gallery_side
    for n in gallery_side:
        assert torch.allclose(g1[n], g2[n], atol=1e-6), n


def test_value_term_of_l_attr_enters_the_loss_when_weighted():
    model = _model("subspace")
    batch = _batch(model, negatives=False)
    batch.values = torch.tensor([[0, -1], [0, 1], [1, 1], [1, -1], [-1, 0], [2, 0]])
    gts = [[10 + i] for i in range(B)]
    off = DQECIRObjective(LossConfig(w_attr=0.5), gts)(model, batch)
    on_obj = DQECIRObjective(LossConfig(w_attr=0.5, attr_value=0.25), gts)
    on = on_obj(model, batch)
    assert "attr_value" not in off and float(on["attr_value"]) > 0
    assert torch.allclose(on["loss"], off["loss"] + 0.5 * 0.25 * on["attr_value"], atol=1e-6)
    model.zero_grad()
    on_obj.attr.value_term(
        model.aw, model.query(batch.reference, batch.text)["q"],
        model.gallery_tokens(batch.target).float().mean(1), batch.values, model.temperature(),
    ).backward()  # fmt: skip
    assert model.aw.proj.grad is not None and model.aw.proj.grad.abs().sum() > 0
