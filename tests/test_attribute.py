"""Attribute weights: multi-label relevance, index compatibility, lexicon labels, L_attr."""

import pytest
import torch
import torch.nn.functional as F

from dqecir.losses import AttributeLoss
from dqecir.models.attribute import AttributeWeights, Lexicon
from dqecir.similarity import similarity


@pytest.mark.parametrize("mode", ["gate", "subspace"])
def test_gated_ranking_equals_query_only_scoring(mode):
    """Index compatibility: the gallery side never depends on the query, so ranking a gallery
    with the weighted query equals ranking the stored index vectors with it."""
    torch.manual_seed(0)
    d, dh = 16, 8
    aw = AttributeWeights(mode, d, dh, ["color", "shape"], subspace_dim=4)
    with torch.no_grad():
        for p in aw.parameters():
            p.add_(0.3 * torch.randn_like(p))
    q = F.normalize(torch.randn(5, d), dim=-1)
    h = torch.randn(5, dh)
    gal = F.normalize(torch.randn(30, 3, d), dim=-1)
    q_star, alpha = aw.query(q, h)
    index = aw.gallery(gal)  # computed once, without any query
    scores = similarity(q_star, index)
    if mode == "gate":
        # <q ⊙ g, t> computed directly, per query
        g = F.softplus(aw.w0) + alpha @ F.softplus(aw.w)
        direct = torch.stack(
            [(gal * (q[i] * g[i]).unsqueeze(0).unsqueeze(0)).sum(-1).amax(-1) for i in range(5)]
        )
        direct = direct / (q * g).norm(dim=-1, keepdim=True)
    else:
        blocks = []
        for i in range(5):
            s = (gal * q[i]).sum(-1)
            for a in range(2):
                qa = aw.attribute_space(q[i], a)
                ta = aw.attribute_space(gal, a)
                s = s + alpha[i, a] * (ta * qa).sum(-1)
            blocks.append(s.amax(-1))
        direct = torch.stack(blocks)
    # equal up to a positive per-query scale, so the rankings are the same
    scale = direct.norm(dim=1, keepdim=True) / scores.norm(dim=1, keepdim=True)
    assert torch.allclose(scores * scale, direct, atol=1e-5)
    assert torch.equal(scores.argsort(dim=1), direct.argsort(dim=1))
    assert index.shape == (30, 3, aw.out_dim)


def test_gate_starts_as_identity_and_alpha_is_multilabel():
    aw = AttributeWeights("gate", 8, 4, ["color", "shape"])
    q = F.normalize(torch.randn(3, 8), dim=-1)
    q_star, alpha = aw.query(q, torch.randn(3, 4))
    assert torch.allclose(q_star, q, atol=1e-6)
    assert alpha.shape == (3, 2) and ((alpha > 0) & (alpha < 1)).all()
    with torch.no_grad():
        aw.relevance.weight.zero_()
        aw.relevance.bias.fill_(5.0)
    _, alpha = aw.query(q, torch.randn(3, 4))
    assert (alpha > 0.99).all()  # both attributes at once: not a softmax


def test_lexicon_labels_and_values():
    lex = Lexicon(
        {
            "color": {"red": ["red", "crimson"], "blue": ["blue"]},
            "shape": {"sneaker": ["sneaker", "sneakers"], "v-neck": ["v-neck"]},
        }
    )
    assert lex.labels("make it crimson", ["color", "shape"]) == [1.0, 0.0]
    assert lex.labels("a blue sneaker instead", ["color", "shape"]) == [1.0, 1.0]
    assert lex.labels("predicted", ["color", "shape"]) == [0.0, 0.0]  # 'red' inside a word
    assert lex.value("now blue, not red", "color") == "blue"
    assert lex.value("with a v-neck", "shape") == "v-neck"


def test_lexicon_tolerates_one_typo_in_long_words():
    lex = Lexicon({"color": {"red": ["crimson"], "blue": ["dusk blue"]},
                   "shape": {"sneaker": ["running shoe", "sneaker"]}})  # fmt: skip
    labels = ["color", "shape"]
    assert lex.labels("make it crimsn", labels) == [1.0, 0.0]  # dropped letter
    assert lex.labels("make it cirmson", labels) == [1.0, 0.0]  # swapped letters
    assert lex.labels("a pair of snaekers", labels) == [0.0, 0.0]  # two edits: no
    assert lex.labels("a sneakr", labels) == [0.0, 1.0]
    assert lex.labels("blue", labels) == [0.0, 0.0]  # head words under 5 letters: exact only
    assert Lexicon(lex.words, fuzzy_min_len=0).labels("make it crimsn", labels) == [0.0, 0.0]


def test_attribute_loss_trains_relevance_toward_labels():
    torch.manual_seed(0)
    aw = AttributeWeights("gate", 8, 4, ["color", "shape"])
    loss_fn = AttributeLoss()
    h = torch.randn(16, 4)
    labels = (h[:, :2] > 0).float()
    q = F.normalize(torch.randn(16, 8), dim=-1)
    t = F.normalize(q + 0.1 * torch.randn(16, 8), dim=-1)
    opt = torch.optim.Adam(aw.parameters(), lr=0.05)
    first = None
    for _ in range(100):
        out = loss_fn(aw, h, q, t, labels, torch.tensor(0.1))
        opt.zero_grad()
        out["attr"].backward()
        opt.step()
        first = first if first is not None else float(out["attr_bce"])
    assert float(out["attr_bce"]) < 0.5 * first
    assert float(out["attr_nce"]) >= 0


def test_value_labels_name_one_value_or_none():
    from dqecir.models.attribute import value_labels

    lex = Lexicon(
        {
            "color": {"red": ["red", "dark red"], "blue": ["blue"], "black": ["black"]},
            "shape": {"sneaker": ["sneaker", "sneakers"], "boot": ["ankle boot"]},
        }
    )
    assert lex.named_values("Make it DARK RED", "color") == {"red"}
    assert lex.named_values("not red but blue", "color") == {"red", "blue"}
    assert lex.named_values("predicted", "color") == set()
    texts = ["make it dark red", "a blue sneaker", "not red but blue", "as ankle boots", "same"]
    got = value_labels(lex, texts, ["color", "shape"])
    # values index lexicon.values(a): color red 0, blue 1, black 2; shape sneaker 0, boot 1
    assert got.tolist() == [[0, -1], [1, 0], [-1, -1], [-1, -1], [-1, -1]]
    assert value_labels(None, texts, ["color"]).eq(-1).all()


def test_value_term_pulls_queries_to_every_target_of_the_named_value():
    """Two queries that name the same colour share their targets as positives: the term is lower
    when the query's colour embedding sits near all targets of its value than near its own target
    alone, and training on it makes the query's colour space predict the value."""
    torch.manual_seed(0)
    aw = AttributeWeights("subspace", 8, 4, ["color", "shape"], subspace_dim=4)
    values = torch.tensor([[0, -1], [0, -1], [1, -1], [1, -1], [-1, 0], [2, -1]])
    centre = F.normalize(torch.randn(3, 8), dim=-1)
    t = F.normalize(centre[values[:, 0].clamp(min=0)] + 0.05 * torch.randn(6, 8), dim=-1)
    tau = torch.tensor(0.1)
    q = torch.randn(6, 8, requires_grad=True)
    opt = torch.optim.Adam([q, *aw.parameters()], lr=0.05)
    first = float(AttributeLoss.value_term(aw, q, t, values, tau))
    for _ in range(150):
        loss = AttributeLoss.value_term(aw, q, t, values, tau)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    labelled = values[:, 0] >= 0
    qa = aw.attribute_space(q.detach()[labelled], 0)
    ta = aw.attribute_space(t[labelled], 0)
    v = values[labelled, 0]
    assert (v[(qa @ ta.T).argmax(1)] == v).all()  # nearest labelled target has the named value
    # off unless weighted; on: named and added to attr
    h, labels = torch.randn(6, 4), torch.ones(6, 2)
    off = AttributeLoss(1.0, 0.0)(aw, h, q, t, labels, tau, values)
    on = AttributeLoss(1.0, 0.0, 0.5)(aw, h, q, t, labels, tau, values)
    assert "attr_value" not in off and "attr_value" in on
    assert torch.allclose(on["attr"], off["attr"] + 0.5 * on["attr_value"])


def test_lexicon_labels_match_a_search_of_each_phrase_alone():
    """labels() scans one alternation per attribute; on texts built from the phrases, parts of
    them and their neighbours it answers as a whole-word search of every phrase one by one."""
    import random
    import re

    words = {
        "color": {"red": ["red", "dark red", "brick"], "blue": ["sky blue", "navy", "t-blue"]},
        "shape": {"boot": ["boot", "ankle boot"], "shirt": ["t-shirt", "shirt"]},
    }
    lex = Lexicon(words, fuzzy_min_len=0)
    pieces = ["red", "dark", "reddish", "bricks", "sky", "blue", "navy", "t-blue", "t", "boot",
              "boots", "ankle", "t-shirt", "shirts", "shirt-", "make", "it", ",", "-", "Red"]  # fmt: skip
    rng = random.Random(0)

    def brute(text: str, a: str) -> float:
        t = text.lower()
        return float(any(re.search(r"\b" + re.escape(p.lower()) + r"\b", t)
                         for ps in words[a].values() for p in ps))  # fmt: skip

    for _ in range(2000):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        text = text.replace(" ,", ",") if rng.random() < 0.5 else text
        assert lex.labels(text, ["color", "shape"]) == [brute(text, "color"), brute(text, "shape")]
