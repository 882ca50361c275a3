"""On the real dataset, reached only through SPOTIFY_TRACKS_URL (skipped without it)."""

import json
import time

import pandas as pd
import pytest

from stages import fetch, merge_genres, split
from stages.common import FEATURE_SETS, GENRE_COLUMN, SPLITS
from stages.params import SplitParams, load_feature_set, load_section
from tests.conftest import REPO, copy_repo, real_data_url, run_cmd

PARAMS = REPO / "params.yaml"
COMMITTED = json.loads((REPO / "metrics" / "test.json").read_text())

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not real_data_url(), reason="SPOTIFY_TRACKS_URL is not set"),
]


@pytest.fixture(scope="module")
def clean_frame(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    pinned = load_section("fetch", REPO / "params.yaml")
    # the real file matches the content hash params.yaml pins (what every fetch checks)
    report = fetch.fetch(real_data_url(), out / "tracks.csv", out / "fetch.json",
                         content_sha256_pin=pinned.content_sha256, sha256_pin=pinned.sha256)
    assert report["rows"] == 114_000 and report["content_sha256"] == pinned.content_sha256
    assert report["content_sha256_pinned"]
    frame, counts = split.clean(split.read_raw(out / "tracks.csv"))
    return frame, counts


def test_cleaning_counts(clean_frame):
    frame, counts = clean_frame
    assert counts == {"rows_in": 114_000, "dropped_na": 1, "dropped_duplicates": 450,
                      "rows_clean": 113_549}
    assert frame["track_genre"].nunique() == 114


def test_group_split_shares_no_track(clean_frame):
    frame, counts = clean_frame
    params = SplitParams(strategy="group")
    parts = split.assign_splits(frame, params)
    report = split.split_report(counts, frame, parts, params)
    assert report["shared_track_ids"]["total"] == 0
    assert sum(report["splits"][n]["rows"] for n in SPLITS) == 113_549
    assert 0.19 < report["splits"]["test"]["share"] < 0.21
    for name in SPLITS:
        assert report["splits"][name]["genres"] == 114
    # the random split is the leaky one
    random_parts = split.assign_splits(frame, SplitParams(strategy="random"))
    assert split.split_report(counts, frame, random_parts, params)["shared_track_ids"]["total"] > 1000


def test_recording_split_shares_no_recording(clean_frame):
    frame, counts = clean_frame
    params = SplitParams(strategy="recording")
    started = time.perf_counter()
    parts = split.assign_splits(frame, params)
    assert time.perf_counter() - started < 5
    report = split.split_report(counts, frame, parts, params)
    assert report["shared_track_ids"]["total"] == 0
    assert report["shared_feature_vectors"]["total"] == 0
    assert report["recording_groups"] == 85_989
    assert report["rows_in_multi_row_recordings"] == 42_965
    assert report["largest_recording_rows"] == 146
    assert sum(report["splits"][n]["rows"] for n in SPLITS) == 113_549
    assert 0.19 < report["splits"]["test"]["share"] < 0.21
    for name in SPLITS:
        assert report["splits"][name]["genres"] == 114
    # the group split is the one that leaks feature twins
    group_parts = split.assign_splits(frame, SplitParams(strategy="group"))
    group_report = split.split_report(counts, frame, group_parts, params)
    assert group_report["shared_feature_vectors"]["total"] > 1000


def test_default_merge_gives_66_classes(clean_frame):
    groups = merge_genres.read_groups(REPO / "taxonomies" / "study.yaml")
    frame, _ = clean_frame
    mapping = merge_genres.genre_mapping(groups, set(frame["track_genre"]))
    assert len(merge_genres.class_list(mapping)) == 66


@pytest.fixture(scope="module")
def labeled_splits(clean_frame):
    """The labeled splits the committed run trained on (params.yaml's split and merge_genres),
    made in memory as the split and merge_genres stages make them."""
    frame, _ = clean_frame
    parts = split.assign_splits(frame, load_section("split", PARAMS))
    strategy = load_section("merge_genres", PARAMS).strategy
    groups = (None if strategy == "none"
              else merge_genres.read_groups(REPO / merge_genres.GROUPS_FILES[strategy]))
    mapping = merge_genres.genre_mapping(groups, set(frame[GENRE_COLUMN]))
    return merge_genres.add_labels(parts, mapping), merge_genres.class_list(mapping)


@pytest.mark.parametrize("family", ["softmax", "forest"])  # the fast ones: ~10 s and ~30 s
def test_fast_families_reproduce_the_committed_metrics(family, labeled_splits):
    """The same model, trained with the committed params, scores what metrics/test.json
    says, to within a point: the committed numbers are this code's numbers."""
    from stages import evaluate, model_files, train_trees
    from stages.params import TREES

    splits, classes = labeled_splits
    params = load_section(family, PARAMS)
    features = FEATURE_SETS[load_feature_set(PARAMS)]
    if family in TREES:
        model, _ = train_trees.train(family, params, splits["train"], splits["val"], classes,
                                     features)
    else:
        from stages import train
        from stages.tf_setup import quiet_tensorflow

        quiet_tensorflow()
        model, _, _ = train.train(family, params, splits["train"], splits["val"], classes,
                                  features)
    test = splits["test"]
    proba = model_files.predict_proba(model, test[features].to_numpy("float32"))
    scores = evaluate.score(proba, test, classes, evaluate.labels_per_track(list(splits.values())),
                            evaluate.seen_in_train(test, splits["train"], features))
    got = {key: scores[key] for key in evaluate.HEADLINE}
    assert got == pytest.approx(COMMITTED[family], abs=0.01), (got, COMMITTED[family])


@pytest.mark.slow
def test_whole_pipeline_on_real_data_with_few_epochs(tmp_path):
    """The CI smoke: every stage on the real data, short training (a few minutes)."""
    repo = copy_repo(tmp_path / "repo")
    env = {"SPOTIFY_TRACKS_URL": real_data_url()}
    quick = ["-S", "softmax.epochs=3", "-S", "mlp.epochs=3", "-S", "lstm.epochs=2",
             "-S", "forest.n_estimators=10", "-S", "boosting.max_rounds=3"]
    run_cmd(["dvc", "exp", "run", *quick], repo, env, timeout=1200)
    data = json.loads((repo / "reports/data.json").read_text())
    assert data["cleaning"]["rows_clean"] == 113_549
    assert data["shared_track_ids"]["total"] == 0
    assert data["shared_feature_vectors"]["total"] == 0
    for name in SPLITS:
        assert len(pd.read_parquet(repo / f"data/labeled/{name}.parquet")) == \
            data["splits"][name]["rows"]
    provenance = json.loads((repo / "reports/fetch.json").read_text())
    assert provenance["content_sha256_pinned"] and "/" not in provenance["source"]
    for path in ("plots/confusion.png", "plots/per_genre.csv", "plots/top_confusions.csv",
                 "models/genre-classifier.keras", "reports/published.json"):
        assert (repo / path).is_file(), path
    for family in ("softmax", "mlp", "lstm"):
        assert (repo / f"plots/train/{family}.csv").is_file()
        assert (repo / f"models/{family}.keras").is_file()
    for family in ("softmax", "mlp", "lstm", "forest", "boosting"):
        assert (repo / f"reports/train/{family}.json").is_file()
    assert (repo / "reports/blend.json").is_file()
    report = json.loads((repo / "reports/evaluate.json").read_text())
    assert report["test_set"]["classes"] == 114
    assert report["test_set"]["rows"] == data["splits"]["test"]["rows"]
    assert report["test_set"]["seen_in_train_share"] == 0.0  # the recording split's point
    metrics = json.loads((repo / "metrics/test.json").read_text())
    # the test split is the committed run's (same data, split and classes): the same lines
    assert (metrics["chance"], metrics["ceiling"]) == (COMMITTED["chance"], COMMITTED["ceiling"])
    # few epochs and trees: below the committed scores, yet far above chance (about 1/114)
    for family in ("softmax", "mlp", "lstm", "forest", "boosting"):
        assert 10 * metrics["chance"] < metrics[family]["accuracy"], family
        assert metrics[family]["accuracy"] < COMMITTED[family]["accuracy"] + 0.01, family
    assert len(pd.read_csv(repo / "plots/top_confusions.csv")) == 20
    # the learned taxonomy (train+val only) and the accuracy-vs-classes curve
    taxonomy = json.loads((repo / "reports/taxonomy.json").read_text())
    assert len(taxonomy["genres"]) == 114 and taxonomy["merges"][-1]["classes_after"] == 6
    curve = pd.read_csv(repo / "plots/taxonomy/learned.csv")
    assert list(curve["classes"]) == [114, 100, 90, 80, 66, 50, 40, 30, 20, 10]
    assert (curve["accuracy"] > curve["chance"]).all()
    assert list(pd.read_csv(repo / "plots/taxonomy/study.csv")["classes"]) == [66]
