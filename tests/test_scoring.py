"""Scoring rankings and predictions files: official examples, oracles, breakdowns, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_official import (
    cirr_name,
    fiq_ids,
    make_circo,
    make_cirr,
    make_fashioniq,
    official_root,
    write_json,
)

from dqecir.cli import main
from dqecir.data.formats import load_circo, load_cirr, load_fashioniq
from dqecir.errors import DataError, PredictionsError
from dqecir.scoring import score_predictions_file, score_rankings, validate_predictions

# ---- helpers ---------------------------------------------------------------------------------


def official_circo_loop(annotations: list[dict], predictions: dict, ranks=(1, 5, 10, 25, 50)):
    """A naive re-implementation of miccunifi/CIRCO src/evaluation.py ``compute_metrics``
    (whose default ranks are 5, 10, 25, 50; we also ask for 1)."""
    by_id = {r["id"]: r for r in annotations}
    aps = {k: [] for k in ranks}
    recalls = {k: [] for k in ranks}
    for query_id, preds in predictions.items():
        record = by_id[int(query_id)]
        gt = record["gt_img_ids"]
        preds = np.array(preds, dtype=int)
        labels = np.isin(preds, gt)
        precisions = np.cumsum(labels, axis=0) * labels / np.arange(1, labels.shape[0] + 1)
        for k in ranks:
            aps[k].append(float(np.sum(precisions[:k]) / min(len(gt), k)))
            recalls[k].append(float(np.sum((preds == record["target_img_id"])[:k])))
    out = {f"map@{k}": 100 * float(np.mean(aps[k])) for k in ranks if k != 1}
    out.update({f"recall@{k}": 100 * float(np.mean(recalls[k])) for k in ranks})
    return out


def circo_root_with_image_info(tmp_path: Path, split: str, extra_ids=()) -> tuple[Path, list]:
    """Real CIRCO annotations plus a generated COCO image-info file (the real one is not
    shipped) listing every id the annotations and ``extra_ids`` use."""
    records = json.loads((official_root() / "circo/annotations" / f"{split}.json").read_text())
    ids = set(extra_ids)
    for r in records:
        ids.add(r["reference_img_id"])
        ids.update(r.get("gt_img_ids", []))
    write_json(tmp_path / "annotations" / f"{split}.json", records)
    info = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in sorted(ids)]}
    write_json(tmp_path / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json", info)
    return tmp_path, records


def oracle(split, n: int = 50) -> dict[str, list[str]]:
    """Ground truths first, then other gallery images; the reference removed where the
    protocol removes it."""
    out = {}
    head = split.gallery[: n + 20]
    for q in split.queries:
        dropped = {*q.gt, q.reference} if split.remove_reference else set(q.gt)
        out[q.qid] = (list(q.gt) + [g for g in head if g not in dropped])[:n]
    return out


def run_score(capsys, benchmark: str, root: Path, split: str, predictions: Path):
    argv = ["score", "--benchmark", benchmark, "--root", str(root), "--split", split]
    code = main([*argv, "--predictions", str(predictions)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- official examples ------------------------------------------------------------------------


def test_circo_submission_example_matches_official_loop(tmp_path, capsys):
    example = official_root() / "submission-examples" / "circo_submission_val.json"
    predictions = json.loads(example.read_text())
    extra = {i for preds in predictions.values() for i in preds}
    root, records = circo_root_with_image_info(tmp_path, "val", extra)
    expected = official_circo_loop(records, predictions)
    got = score_predictions_file("circo", root, "val", example)
    assert got["num_queries"] == 220
    assert set(got) == {*expected, "num_queries"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < got["map@10"] < 100
    code, out, _ = run_score(capsys, "circo", root, "val", example)
    assert code == 0 and json.loads(out)["map@10"] == pytest.approx(expected["map@10"])


def test_cirr_test1_examples_validate_and_cannot_be_scored(capsys):
    root = official_root() / "cirr"
    split = load_cirr(root, "test1", resolve_images=False)
    examples = official_root() / "submission-examples"
    for name, metric, length in [
        ("cirr_test1_pred_ranks_recall.json", "recall", 50),
        ("cirr_test1_pred_ranks_recall_subset.json", "recall_subset", 3),
    ]:
        parsed = validate_predictions("cirr", [split], examples / name)
        assert parsed.metric == metric and len(parsed.rankings) == 4148
        assert {len(r) for r in parsed.rankings.values()} == {length}
        with pytest.raises(DataError, match="has no targets.*valid \\(4148 queries\\)"):
            score_predictions_file("cirr", root, "test1", examples / name)
        code, out, err = run_score(capsys, "cirr", root, "test1", examples / name)
        assert code == 0, err  # a valid file for a test split: checked, reported valid
        assert json.loads(out) == {"valid": True, "scored": False, "num_queries": 4148,
                                   "metric": metric}  # fmt: skip
        assert f"{name}: valid cirr predictions for all 4148 queries" in err
        assert "evaluation server" in err


# ---- oracles and hand-made values ------------------------------------------------------------


def test_cirr_val_oracle_file_scores_100(tmp_path, capsys):
    root = official_root() / "cirr"
    split = load_cirr(root, "val", resolve_images=False)
    path = write_json(tmp_path / "p.json", {"version": "rc2", "metric": "recall", **oracle(split)})
    code, out, _ = run_score(capsys, "cirr", root, "val", path)
    metrics = json.loads(out)
    assert code == 0 and metrics["num_queries"] == 4181
    for key in ("recall@1", "recall@50", "recall_subset@1", "recall_subset@3", "avg", "map@10"):
        assert metrics[key] == pytest.approx(100.0), key
    subsets = {
        q.qid: [q.target] + [m for m in q.members if m not in (q.reference, q.target)][:2]
        for q in split.queries
    }
    path = write_json(tmp_path / "s.json", {"version": "rc2", "metric": "recall_subset", **subsets})
    metrics = score_predictions_file("cirr", root, "val", path)
    short = {"version": "rc2", "metric": "recall", **oracle(split, 49)}
    code, _, err = run_score(capsys, "cirr", root, "val", write_json(tmp_path / "x.json", short))
    assert code == 2 and "record 12060" in err and "49 entries, at least 50 required" in err
    assert metrics == {
        "recall_subset@1": 100.0,
        "recall_subset@2": 100.0,
        "recall_subset@3": 100.0,
        "num_queries": 4181.0,
    }


def test_fashioniq_file_format_and_average(tmp_path, capsys):
    for category in ("dress", "shirt"):
        make_fashioniq(tmp_path, category, images=False)
    predictions: dict = {"version": "dqecir-fiq1"}
    for category in ("dress", "shirt"):
        ids = fiq_ids(category)
        for i in range(3):
            # dress: target first (hit); shirt: only query 0 hits, the others list it last
            ranking = [ids[i + 1]] + [x for x in ids if x != ids[i + 1]]
            if category == "shirt" and i > 0:
                ranking = ranking[1:] + ranking[:1]
            predictions[f"{category}/{i}"] = ranking
    path = write_json(tmp_path / "fiq.json", predictions)
    code, out, _ = run_score(capsys, "fashioniq", tmp_path, "val", path)
    metrics = json.loads(out)
    assert code == 0
    assert metrics["dress/recall@10"] == 100.0 and metrics["shirt/recall@10"] == 100.0
    assert metrics["average/recall@50"] == 100.0 and metrics["num_queries"] == 6
    shirt = load_fashioniq(tmp_path, "val", "shirt", resolve_images=False)
    got = score_rankings(shirt, predictions, ks={"recall": (1, 5, 6)})
    assert got["recall@1"] == pytest.approx(100 / 3) and got["recall@5"] == pytest.approx(100 / 3)
    assert got["recall@6"] == 100.0


def test_cirr_hand_made_values_and_breakdowns(tmp_path):
    make_cirr(tmp_path, extra=lambda i: {"kind": "color" if i < 2 else "shape", "heldout": i == 2})
    split = load_cirr(tmp_path, "val", resolve_images=False)
    n = [cirr_name("val", i) for i in range(8)]
    rankings = {
        # query 100: target n1 at rank 2, soft n2 at rank 1
        "100": [n[2], n[1], n[3], n[4], n[5], n[6], n[7]],
        # query 101: target n2 at rank 6
        "101": [n[0], n[1], n[3], n[4], n[5], n[2], n[6], n[7]],
        # query 102: target n3 first
        "102": [n[3], n[0], n[1], n[4], n[5], n[6], n[7]],
    }
    m = score_rankings(split, rankings)
    assert m["recall@1"] == pytest.approx(100 / 3)
    assert m["recall@5"] == pytest.approx(200 / 3)
    assert m["recall@10"] == 100.0
    # subsets (members minus reference): 100 -> [n2, n1, ...], 101 -> [n3, n4, n5, n2, n6]
    assert m["recall_subset@1"] == pytest.approx(100 / 3)
    assert m["recall_subset@2"] == pytest.approx(200 / 3)
    assert m["avg"] == pytest.approx((200 / 3 + 100 / 3) / 2)
    # map@5 over gt {target, soft 1.0}: q100 (1 + 1) / 2; q101 n2 at 6, n3 at 3 -> (1/3) / 2;
    # q102 gt {n3, n4}: n3 at 1, n4 at 4 -> (1 + 2/4) / 2
    assert m["map@5"] == pytest.approx(100 * (1 + 1 / 6 + 0.75) / 3)
    assert m["color/num_queries"] == 2 and m["shape/num_queries"] == 1
    assert m["color/recall@1"] == 0.0 and m["shape/recall@1"] == 100.0
    assert m["heldout/recall@1"] == 100.0 and m["heldout/num_queries"] == 1
    assert "heldout/map@10" in m and "color/recall_subset@1" in m


def test_scoring_never_removes_the_reference(tmp_path):
    make_circo(tmp_path, images=False)
    split = load_circo(tmp_path, "val", resolve_images=False)
    rankings = {q.qid: [q.reference, *q.gt] for q in split.queries}
    m = score_rankings(split, rankings)
    assert m["recall@1"] == 0.0 and m["recall@5"] == 100.0
    assert m["map@5"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


def test_absent_members_never_earn_a_subset_hit(tmp_path):
    make_cirr(tmp_path)
    split = load_cirr(tmp_path, "val", resolve_images=False)
    n = [cirr_name("val", i) for i in range(8)]
    # only non-members listed for query 100 (members n0..n5): its target n1 is absent
    rankings = {"100": [n[6], n[7]], "101": [n[2]], "102": [n[3]]}
    m = score_rankings(split, rankings, ks={"recall": (1,), "map": (), "recall_subset": (3,)})
    assert m["recall_subset@3"] == pytest.approx(200 / 3)


def test_score_rankings_errors(tmp_path):
    make_cirr(tmp_path, "test1", targets=False, images=False)
    split = load_cirr(tmp_path, "test1", resolve_images=False)
    with pytest.raises(DataError, match="has no targets"):
        score_rankings(split, {})
    make_cirr(tmp_path, images=False)
    split = load_cirr(tmp_path, "val", resolve_images=False)
    with pytest.raises(PredictionsError, match="record 101: no ranking"):
        score_rankings(split, {"100": []})


# ---- bad predictions files exit 2 naming the file and the key ----------------------------------


def _cirr_fixture(tmp_path: Path):
    """A fixture CIRR tree (8 images: a full ranking holds 7) and a valid recall file."""
    root = make_cirr(tmp_path / "cirr", images=False)
    split = load_cirr(root, "val", resolve_images=False)
    return root, {"version": "rc2", "metric": "recall", **oracle(split)}


def _mutate(data: dict, key: str, fn):
    data = json.loads(json.dumps(data))
    fn(data, key)
    return data


CIRR_BAD = [
    ("missing query", lambda d, k: d.pop(k), "100", "missing query"),
    ("unknown key", lambda d, k: d.update({"999": d["100"]}), "999", "not a query id"),
    ("duplicate", lambda d, k: d[k].__setitem__(5, d[k][0]), "100", "duplicate id"),
    ("unknown image", lambda d, k: d[k].__setitem__(2, "dev-x"), "101", "unknown image 'dev-x'"),
    ("too short", lambda d, k: d.update({k: d[k][:6]}), "102", "6 entries, at least 7"),
    ("not a list", lambda d, k: d.update({k: "x"}), "100", "must be a JSON list"),
    ("not a name", lambda d, k: d[k].__setitem__(0, 3), "100", "entry 1 is 3"),
    ("no version", lambda d, k: d.pop(k), "version", "missing, expected 'rc2'"),
    ("bad version", lambda d, k: d.update({k: "rc1"}), "version", "'rc1'"),
    ("bad metric", lambda d, k: d.update({k: "map"}), "metric", "'map', expected 'recall'"),
]


@pytest.mark.parametrize(("case", "fn", "key", "message"), CIRR_BAD, ids=[c[0] for c in CIRR_BAD])
def test_bad_cirr_predictions_exit_2(tmp_path, capsys, case, fn, key, message):
    root, good = _cirr_fixture(tmp_path)
    path = write_json(tmp_path / "pred.json", _mutate(good, key, fn))
    code, out, err = run_score(capsys, "cirr", root, "val", path)
    assert code == 2 and out == ""
    assert str(path) in err and f"record {key}" in err and message in err


def test_bad_subset_and_json_files_exit_2(tmp_path, capsys):
    root, good = _cirr_fixture(tmp_path)
    subset = {k: v[:3] for k, v in good.items() if k not in ("version", "metric")}
    subset["100"] = [cirr_name("val", 7), *subset["100"][1:]]  # not a member of query 100
    path = write_json(tmp_path / "s.json", {"version": "rc2", "metric": "recall_subset", **subset})
    code, _, err = run_score(capsys, "cirr", root, "val", path)
    assert code == 2 and "record 100" in err and "not in the img_set members" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "rc2", ', encoding="utf-8")
    code, _, err = run_score(capsys, "cirr", root, "val", bad)
    assert code == 2 and str(bad) in err and "malformed JSON" in err
    code, _, err = run_score(capsys, "cirr", root, "val", tmp_path / "absent.json")
    assert code == 2 and "absent.json" in err and "file not found" in err
    write_json(bad, [1, 2])
    code, _, err = run_score(capsys, "cirr", root, "val", bad)
    assert code == 2 and "expected a JSON object" in err


def test_json_python_cannot_hold_and_repeated_keys_exit_2(tmp_path, capsys):
    """JSON nested 100,000 deep, a 5000-digit integer, an id "²" (str.isdigit says yes, int
    says no), a query key given twice (json keeps the last one silently): each a clear error
    naming the file, never a traceback."""
    make_circo(tmp_path / "circo", images=False)
    split = load_circo(tmp_path / "circo", "val", resolve_images=False)
    good = {q: [int(i) for i in r] for q, r in oracle(split).items()}
    body = json.dumps(good)[1:-1]
    cases = [
        ("deep", "[" * 100_000 + "]" * 100_000, "malformed JSON: nested too deeply"),
        ("digits", '{"0": [' + "9" * 5000 + "]}", "a number has too many digits"),
        ("super", json.dumps({**good, "0": ["²", *good["0"]]}), "entry 1 is '²', expected an"),
        ("long", json.dumps({**good, "0": ["9" * 5000]}), "entry 1 is '99999"),
        ("twice", "{" + body + ', "1": ' + json.dumps(good["1"]) + "}", "key given twice"),
    ]
    for name, text, message in cases:
        path = tmp_path / f"{name}.json"
        path.write_text(text, encoding="utf-8")
        code, out, err = run_score(capsys, "circo", tmp_path / "circo", "val", path)
        assert code == 2 and out == "" and "Traceback" not in err, (name, err)
        assert str(path) in err and message in err, (name, err)
    assert "record 1" in err  # the repeated key is named


def test_bad_circo_and_fashioniq_files_exit_2(tmp_path, capsys):
    make_circo(tmp_path / "circo", images=False)
    split = load_circo(tmp_path / "circo", "val", resolve_images=False)
    good = {q: [int(i) for i in r] for q, r in oracle(split).items()}
    assert (
        score_predictions_file(
            "circo", tmp_path / "circo", "val", write_json(tmp_path / "g.json", good)
        )["recall@1"]
        == 100.0
    )
    for key, fn, message in [
        ("1", lambda d: d["1"].__setitem__(0, "abc"), "entry 1 is 'abc', expected an integer"),
        ("2", lambda d: d["2"].__setitem__(1, 99), "unknown image '99'"),
        ("0", lambda d: d.update({"0": d["0"][:6]}), "6 entries, at least 7"),
        ("0", lambda d: d.pop("0"), "missing query"),
    ]:
        data = json.loads(json.dumps(good))
        fn(data)
        path = write_json(tmp_path / f"c{key}.json", data)
        code, _, err = run_score(capsys, "circo", tmp_path / "circo", "val", path)
        assert code == 2 and str(path) in err and f"record {key}" in err and message in err
    make_fashioniq(tmp_path / "fiq", images=False)
    path = write_json(tmp_path / "f.json", {"dress/0": fiq_ids("dress")})
    code, _, err = run_score(capsys, "fashioniq", tmp_path / "fiq", "val", path)
    assert code == 2 and "record version" in err and "dqecir-fiq1" in err
