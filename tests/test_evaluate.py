"""Metrics on tiny hand-computed examples."""

import numpy as np
import pandas as pd
import pytest

from stages import evaluate as ev
from stages import ranking
from stages import publish as pub
from stages.common import FEATURES

CLASSES = ["a", "b", "c"]


def test_top_k_accuracy():
    # four classes, so top-3 can miss (row 1's class d is last)
    proba = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.3, 0.6, 0.0], [0.2, 0.5, 0.3, 0.0],
                      [0.1, 0.2, 0.3, 0.4]])
    y = np.array([0, 3, 2, 1])
    assert ev.top_k_accuracy(y, proba, 1) == 0.25  # only row 0
    assert ev.top_k_accuracy(y, proba, 2) == 0.5  # + row 2 (c is second)
    assert ev.top_k_accuracy(y, proba, 3) == 0.75  # + row 3 (b is third); row 1's d is last
    assert ev.top_k_accuracy(y, proba, 4) == 1.0
    assert ev.top_k_accuracy(y, proba, 10) == 1.0  # k above the class count
    assert ev.top_k_accuracy(y[:0], proba[:0], 3) == 0.0


def _tied_table(rows=400, classes=12, seed=3):
    """Probabilities with many exact ties, at and across the top-k boundary."""
    rng = np.random.default_rng(seed)
    proba = rng.integers(0, 4, size=(rows, classes)).astype("float32")  # 4 levels: ties everywhere
    proba[:20] = 1.0  # every class tied
    proba /= proba.sum(axis=1, keepdims=True)
    return proba, rng.integers(0, classes, size=rows)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_evaluate_counts_the_top_k_that_predict_answers(k):
    from stages.predict import top_k_table

    proba, y = _tied_table()
    names = [f"genre{i}" for i in range(proba.shape[1])]
    table = top_k_table(proba, names, k)
    answered = table[[f"genre_{r + 1}" for r in range(k)]].to_numpy()
    right = (answered == np.asarray(names)[y][:, None]).any(axis=1)
    assert ev.top_k_accuracy(y, proba, k) == right.mean()
    # the rule itself: ties go to the lower class index (a stable sort)
    expected = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    assert ev.top_k_accuracy(y, proba, k) == (expected == y[:, None]).any(axis=1).mean()
    # top-1 is what score() counts as the prediction: the lower index of tied maxima
    if k == 1:
        np.testing.assert_array_equal(ranking.top_class(proba), expected[:, 0])
        np.testing.assert_array_equal(answered[:, 0], np.asarray(names)[expected[:, 0]])


def test_tie_at_the_top_k_boundary_goes_to_the_lower_index():
    proba = np.array([[0.4, 0.2, 0.2, 0.2]])
    # classes 1, 2, 3 tie for second: top-2 is {0, 1}, top-3 is {0, 1, 2}
    assert ev.top_k_accuracy(np.array([1]), proba, 2) == 1.0
    assert ev.top_k_accuracy(np.array([3]), proba, 2) == 0.0
    assert ev.top_k_accuracy(np.array([2]), proba, 3) == 1.0
    assert ev.top_k_accuracy(np.array([3]), proba, 3) == 0.0
    assert ranking.top_k_classes(proba, 3).tolist() == [[0, 1, 2]]


def _test_frame(rows):
    """rows: (track_id, feature value, label); identical value = identical features."""
    frame = pd.DataFrame({f: 0.0 for f in FEATURES}, index=range(len(rows)))
    frame["track_id"] = [r[0] for r in rows]
    frame["danceability"] = [r[1] for r in rows]
    frame["label"] = [r[2] for r in rows]
    return frame


def test_any_genre_accuracy_counts_any_label_of_the_track():
    test = _test_frame([("t1", 0.1, "a"), ("t1", 0.1, "b"), ("t2", 0.2, "c"), ("t3", 0.3, "a")])
    other = _test_frame([("t3", 0.3, "b")])  # t3 also carries b, in another split
    labels = ev.labels_per_track([test, other])
    assert labels == {("t1", "a"), ("t1", "b"), ("t2", "c"), ("t3", "a"), ("t3", "b")}
    # predictions: a, a, a, b -> right: t1(a) yes, t1(a) yes, t2 no, t3(b) yes
    assert ev.any_genre_accuracy(test["track_id"], ["a", "a", "a", "b"], labels) == 0.75


def test_ceiling_counts_one_prediction_per_identical_input():
    test = _test_frame([
        ("t1", 0.1, "a"), ("t1", 0.1, "b"), ("t1", 0.1, "b"),  # best: b, 2 of 3
        ("t2", 0.2, "c"),                                     # 1 of 1
        ("t3", 0.3, "a"), ("t4", 0.3, "c"),                    # same features: 1 of 2
    ])
    assert ev.ceiling_accuracy(test) == pytest.approx(4 / 6)


def test_score_on_a_hand_example():
    test = _test_frame([("t1", 0.1, "a"), ("t2", 0.2, "b"), ("t3", 0.3, "c"), ("t4", 0.4, "c")])
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.1, 0.5, 0.4]])
    seen = np.array([True, True, False, False])
    result = ev.score(proba, test, CLASSES, ev.labels_per_track([test]), seen)
    assert result["accuracy"] == 0.5 and result["top3"] == 1.0
    # right: rows 0 and 2 -> 1 of the 2 seen rows, 1 of the 2 unseen rows
    assert result["accuracy_seen_in_train"] == 0.5 and result["accuracy_unseen"] == 0.5
    stats = ev.test_set_stats(test, seen, CLASSES)
    assert stats == {"classes": 3, "rows": 4, "chance": 0.5, "ceiling": 1.0,
                     "seen_in_train_share": 0.5}
    # metrics are numbers only: no strings that `dvc metrics diff` can't compare
    assert all(isinstance(v, float) for v in result.values())
    expected_loss = -np.mean(np.log([0.7, 0.3, 0.8, 0.4]))
    assert result["log_loss"] == pytest.approx(expected_loss, abs=1e-4)
    # per-class F1: a 2/3, b 0, c 2/3 -> macro 4/9; weighted (1*2/3 + 1*0 + 2*2/3) / 4 = 1/2
    assert result["macro_f1"] == pytest.approx(4 / 9, abs=1e-4)
    assert result["weighted_f1"] == pytest.approx(0.5, abs=1e-4)


def test_seen_in_train_matches_exact_feature_rows_only():
    train = _test_frame([("t1", 0.1, "a"), ("t2", 0.2, "b")])
    test = _test_frame([("t9", 0.1, "c"), ("t8", 0.1000001, "a"), ("t7", 0.3, "a")])
    np.testing.assert_array_equal(ev.seen_in_train(test, train), [True, False, False])


def test_score_with_no_seen_rows_reports_none_not_zero():
    test = _test_frame([("t1", 0.1, "a"), ("t2", 0.2, "b")])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    result = ev.score(proba, test, CLASSES, ev.labels_per_track([test]), np.array([False, False]))
    assert ev.test_set_stats(test, np.array([False, False]), CLASSES)["seen_in_train_share"] == 0.0
    assert result["accuracy_seen_in_train"] is None and result["accuracy_unseen"] == 1.0


def test_chance_is_the_majority_class_share():
    test = _test_frame([("t1", 0.1, "a"), ("t2", 0.2, "b"), ("t3", 0.3, "b"), ("t4", 0.4, "c")])
    assert ev.chance_accuracy(test) == 0.5
    assert ev.chance_accuracy(test.iloc[:0]) == 0.0


def test_headline_metrics_hold_every_family_and_only_numbers():
    report = {
        "families": {f: {"accuracy": 0.3, "top3": 0.5, "top5": 0.6, "macro_f1": 0.2,
                         "log_loss": 2.0, "ece": 0.02, "accuracy_seen_in_train": None}
                     for f in ("softmax", "mlp", "lstm")},
        "test_set": {"classes": 3, "rows": 4, "chance": 0.25, "ceiling": 0.9,
                     "seen_in_train_share": 0.0},
    }
    assert ev.headline(report) == {
        "softmax": {"accuracy": 0.3, "top5": 0.6, "macro_f1": 0.2, "ece": 0.02},
        "mlp": {"accuracy": 0.3, "top5": 0.6, "macro_f1": 0.2, "ece": 0.02},
        "lstm": {"accuracy": 0.3, "top5": 0.6, "macro_f1": 0.2, "ece": 0.02},
        "chance": 0.25, "ceiling": 0.9,
    }


def test_confusion_and_top_confusions():
    actual = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 2, 1, 0, 2, 2])
    matrix = pub.confusion_counts(actual, predicted, 3)
    assert matrix.tolist() == [[1, 2, 1], [1, 1, 0], [0, 0, 2]]
    table = pub.top_confusions(matrix, CLASSES, k=2)
    assert table.to_dict("records") == [
        {"pair": "a → b", "actual": "a", "predicted": "b", "count": 2, "share_of_actual": 0.5},
        {"pair": "a → c", "actual": "a", "predicted": "c", "count": 1, "share_of_actual": 0.25},
    ]
    # never lists the diagonal, stops when the off-diagonal runs out
    assert len(pub.top_confusions(np.diag([3, 4, 5]), CLASSES)) == 0


def test_per_class_scores_sorted_by_f1():
    scores = pub.per_class_scores(np.array([0, 1, 2, 2]), np.array([0, 0, 2, 2]), CLASSES)
    assert scores["genre"].tolist() == ["c", "a", "b"]
    assert scores["support"].tolist() == [2, 1, 1]


def test_cluster_order_puts_confused_classes_together():
    # classes 0 and 2 confuse each other; 1 and 3 confuse each other
    matrix = np.array([[10, 0, 8, 0], [0, 10, 0, 8], [8, 0, 10, 0], [0, 8, 0, 10]])
    order = list(pub.cluster_order(matrix))
    assert abs(order.index(0) - order.index(2)) == 1
    assert abs(order.index(1) - order.index(3)) == 1


def test_ceiling_and_seen_in_train_use_the_models_features():
    from stages.common import AUDIO_FEATURES

    # two tracks that differ only in popularity, which an audio-features model never sees
    test = _test_frame([("t1", 0.1, "a"), ("t2", 0.1, "b")])
    test["popularity"] = [10.0, 90.0]
    assert ev.ceiling_accuracy(test) == 1.0  # all 15: two distinct inputs
    assert ev.ceiling_accuracy(test, AUDIO_FEATURES) == 0.5  # 13: one input, two labels
    train = test.iloc[:1].assign(popularity=50.0)
    np.testing.assert_array_equal(ev.seen_in_train(test, train), [False, False])
    np.testing.assert_array_equal(ev.seen_in_train(test, train, AUDIO_FEATURES), [True, True])
    stats = ev.test_set_stats(test, np.array([True, True]), CLASSES, AUDIO_FEATURES)
    assert stats["ceiling"] == 0.5


@pytest.mark.parametrize("mlp_features, ceiling", [("audio", 0.5), ("all", 1.0)])
def test_evaluate_feeds_each_model_its_own_features(in_tmp_repo, mlp_features, ceiling):
    from stages import model_files, models
    from stages.common import AUDIO_FEATURES, FEATURE_SETS, write_json, write_parquet
    from stages.params import validate
    from stages.split import clean
    from stages.tf_setup import quiet_tensorflow
    from tests.conftest import make_tracks

    quiet_tensorflow()
    frame, _ = clean(make_tracks(rows_per_genre=10))
    frame["label"] = frame["track_genre"]
    classes = sorted(frame["label"].unique())
    # the same audio features under another popularity and genre: only 15 features tell them apart
    twins = frame.head(6).assign(
        popularity=lambda f: f["popularity"] + 1, track_id=lambda f: f["track_id"] + "-twin",
        label=lambda f: f["label"].map({"acoustic": "blues"}).fillna("dance"))
    test = pd.concat([frame.head(6), twins], ignore_index=True)
    for split, part in (("train", frame), ("val", frame), ("test", test)):
        write_parquet(f"data/labeled/{split}.parquet", part)
    write_json("data/labeled/fold.json", {"fold": None})
    for family, features in (("softmax", AUDIO_FEATURES), ("mlp", FEATURE_SETS[mlp_features])):
        params = validate(family, {"hidden": [4]} if family == "mlp" else {})
        model = models.build(family, frame[features].to_numpy("float32"), len(classes), params,
                             features)
        model_files.save_model(model, in_tmp_repo / "models" / f"{family}.keras", classes,
                               features)
    report, curves, _ = ev.evaluate(["softmax", "mlp"], in_tmp_repo / "models")
    assert set(curves) == {"softmax", "mlp"}
    assert curves["mlp"]["rows"].sum() == len(test)  # every test row in one confidence bin
    assert report["families"]["softmax"]["features"] == 13
    assert report["families"]["mlp"]["features"] == len(FEATURE_SETS[mlp_features])
    # the test-set lines use every feature some model takes: with only audio models the
    # twins are one input with two labels
    assert report["test_set"]["ceiling"] == ceiling


def test_calibration_error_and_reliability_curve():
    # 4 rows at confidence 0.9 of which 2 are right, 2 rows at 0.6 both right
    proba = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    actual = np.array([0, 0, 1, 1, 0, 0])
    curve = ev.reliability_curve(proba, actual)
    assert curve.to_dict("list") == {"confidence": [0.6, 0.9], "accuracy": [1.0, 0.5],
                                     "rows": [2, 4]}
    # ECE = (2 * |1.0 - 0.6| + 4 * |0.5 - 0.9|) / 6
    assert ev.score(proba, pd.DataFrame({"label": np.array(["a", "b"])[actual],
                                         "track_id": [str(i) for i in range(6)]}),
                    ["a", "b"], {str(i): {"a"} for i in range(6)},
                    np.zeros(6, bool))["ece"] == pytest.approx(2.4 / 6, abs=1e-5)


def test_bootstrap_interval_covers_zero_for_two_equally_good_models():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(1000), 2)  # recordings of two rows
    right_a, right_b = rng.random(2000) < 0.5, rng.random(2000) < 0.5
    gap = ev.paired_bootstrap(right_a, right_b, groups)
    assert gap["low"] < 0 < gap["high"]
    assert gap["difference"] == round(float(right_a.mean() - right_b.mean()), 5)
    assert gap["low"] <= gap["difference"] <= gap["high"]
    assert ev.paired_bootstrap(right_a, right_b, groups) == gap  # seeded


def test_bootstrap_interval_excludes_zero_for_a_clearly_better_model():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(1000), 2)
    better, worse = rng.random(2000) < 0.6, rng.random(2000) < 0.5
    gap = ev.paired_bootstrap(better, worse, groups)
    assert 0 < gap["low"] < gap["difference"] < gap["high"]


def test_bootstrap_draws_whole_recordings():
    # 20 recordings of 50 rows: a is right on the first 10, b on the other 10. Row by row
    # the accuracies look precise; only 20 independent recordings lie behind them.
    groups = np.repeat(np.arange(20), 50)
    right_a = groups < 10
    right_b = ~right_a
    by_recording = ev.paired_bootstrap(right_a, right_b, groups)
    by_row = ev.paired_bootstrap(right_a, right_b, np.arange(1000))
    assert by_recording["difference"] == by_row["difference"] == 0.0
    width = by_recording["high"] - by_recording["low"]
    assert width > 0.6 and width > 5 * (by_row["high"] - by_row["low"])


def test_the_reference_family_is_chosen_on_validation_not_test():
    groups = np.arange(100)
    right = {"forest": np.arange(100) < 60, "mlp": np.arange(100) < 40,
             "blend": np.arange(100) < 70}
    # the forest is better on test, the mlp on validation: the mlp is the reference
    comparison = ev.comparisons(right, {"forest": 0.5, "mlp": 0.55, "blend": 0.6}, groups,
                                ("softmax", "mlp", "lstm", "forest", "boosting"))
    assert comparison["reference"] == "mlp"
    assert set(comparison["models"]) == {"forest", "blend"}  # the blend is never the reference
    assert comparison["models"]["blend"]["difference"] == 0.3


def _genre_frame(genres: list[str]) -> pd.DataFrame:
    """Rows of the given genres, each its own recording (distinct track_id and features)."""
    from stages.common import GENRE_COLUMN, ID_COLUMN, LABEL_COLUMN

    frame = pd.DataFrame({f: np.arange(len(genres), dtype=float) for f in FEATURES})
    frame[ID_COLUMN] = [f"t{i}" for i in range(len(genres))]
    frame[GENRE_COLUMN] = genres
    frame[LABEL_COLUMN] = genres
    return frame


def test_folded_scores_sum_probabilities_per_coarse_class_and_pick_the_reference_on_validation():
    genres = ["a", "b", "c", "d"]
    taxonomy = {"a": "ab", "b": "ab", "c": "cd", "d": "cd"}
    test = _genre_frame(["a", "b", "c", "d"] * 25)
    val = _genre_frame(["a", "c"] * 50)
    truth = np.eye(4)
    # "mlp" is wrong on every genre but right on every coarse class: it answers the
    # genre's sibling with 0.6 (a <-> b, c <-> d); "forest" is right on genres a and c only
    sibling = np.array([[0.0, 0.6, 0.2, 0.2], [0.6, 0.0, 0.2, 0.2],
                        [0.2, 0.2, 0.0, 0.6], [0.2, 0.2, 0.6, 0.0]])
    half = np.array([[0.7, 0.0, 0.3, 0.0], [0.0, 0.3, 0.7, 0.0],
                     [0.3, 0.0, 0.7, 0.0], [0.7, 0.0, 0.0, 0.3]])
    rows = np.arange(100) % 4
    test_probas = {"mlp": sibling[rows], "forest": half[rows],
                   "blend": (sibling[rows] + half[rows] + truth[rows]) / 3}
    val_rows = np.arange(100) % 2 * 2  # genres a and c
    val_probas = {name: {"mlp": sibling, "forest": half, "blend": truth}[name][val_rows]
                  for name in test_probas}
    folded = ev.folded_comparisons(test_probas, val_probas, test, val, genres,
                                   {"pairs": taxonomy}, ("mlp", "forest"))
    pairs = folded["pairs"]
    assert pairs["classes"] == 2 and pairs["chance"] == 0.5
    assert pairs["accuracy"] == {"mlp": 1.0, "forest": 0.5, "blend": 1.0}
    assert pairs["val_accuracy"]["mlp"] == 1.0 and pairs["val_accuracy"]["forest"] == 1.0
    # tied on validation: the first single family listed is the reference
    assert pairs["comparison"]["reference"] == "mlp"
    assert pairs["comparison"]["models"]["forest"]["difference"] == -0.5
    # the reference is chosen on validation only: changing test labels leaves it
    swapped = test["track_genre"].map({"a": "c", "b": "d", "c": "a", "d": "b"})
    relabeled = test.assign(track_genre=swapped, label=swapped)
    again = ev.folded_comparisons(test_probas, val_probas, relabeled, val, genres,
                                  {"pairs": taxonomy}, ("mlp", "forest"))
    assert again["pairs"]["comparison"]["reference"] == "mlp"
    assert again["pairs"]["accuracy"]["mlp"] == 0.0


def test_folding_skips_taxonomies_that_do_not_nest_or_merge_nothing():
    genres = ["a", "b", "c"]
    frame = _genre_frame(["a", "b", "c"] * 4)
    probas = {"mlp": np.full((12, 3), 1 / 3)}
    taxonomies = {
        "identity": {"a": "a", "b": "b", "c": "c"},  # merges nothing
        "pairs": {"a": "ab", "b": "ab", "c": "c"},
    }
    folded = ev.folded_comparisons(probas, probas, frame, frame, genres, taxonomies, ("mlp",))
    assert set(folded) == {"pairs"}
    assert folded["pairs"]["classes"] == 2
    # merged classes whose genres a taxonomy splits apart do not nest
    merged = frame.assign(label=frame["track_genre"].map({"a": "ab", "b": "ab", "c": "c"}))
    split_apart = {"a": "ac", "c": "ac", "b": "b"}
    assert ev.folded_comparisons({"mlp": np.full((12, 2), 0.5)}, {"mlp": np.full((12, 2), 0.5)},
                                 merged, merged, ["ab", "c"], {"x": split_apart},
                                 ("mlp",)) == {}


def test_the_benchmark_checks_the_folded_leads_against_one_point():
    from bench.__main__ import FLOORS, targets

    def comparison(difference, low):
        return {"reference": "mlp",
                "models": {"blend": {"difference": difference, "low": low, "high": 0.03}}}

    result = {"metrics": {family: {"accuracy": 0.5} for family in FLOORS["recording-114"]},
              "whole": {"seconds": 60, "peak_rss_mb": 100},
              "predict_rows_per_s": 9000, "comparison": comparison(0.02, 0.01),
              "folded": {"learned": {"classes": 66, "comparison": comparison(0.012, 0.009)},
                         "study": {"classes": 66, "comparison": comparison(0.009, 0.004)}}}
    lines = targets({"recording-114": result})
    learned = [line for line in lines if "folded to learned (66 classes)" in line]
    study = [line for line in lines if "folded to study (66 classes)" in line]
    assert len(learned) == len(study) == 1
    assert "+ 1.0 points" in learned[0] and learned[0].endswith("| met |")
    assert study[0].endswith("| MISSED |")  # +0.9 points: under the floor
    del result["folded"]  # a run kept from before: no folded lines, no error
    assert not [line for line in targets({"recording-114": result}) if "folded" in line]
