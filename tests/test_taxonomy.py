"""The learned taxonomy: confusable genres merge, the size cap holds, test rows never count."""

import json

import numpy as np
import pandas as pd
import pytest

from stages import taxonomy
from stages.common import FEATURES, GENRE_COLUMN, ID_COLUMN, LABEL_COLUMN, UserError
from stages.params import MergeGenresParams

PAIRS = [("acoustic", "folk"), ("metal", "punk"), ("house", "techno"), ("jazz", "blues")]


def paired_genres(rows_per_genre=60, seed=0) -> pd.DataFrame:
    """Split-schema rows: the two genres of a pair share one feature distribution
    (a model can't tell them apart), and the pairs lie far from each other."""
    rng = np.random.default_rng(seed)
    frames = []
    for p, pair in enumerate(PAIRS):
        for genre in pair:
            values = rng.normal(10.0 * p, 1.0, size=(rows_per_genre, len(FEATURES)))
            frame = pd.DataFrame(values, columns=FEATURES)
            frame.insert(0, ID_COLUMN, [f"{genre}-{i}" for i in range(rows_per_genre)])
            frame[GENRE_COLUMN] = genre
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def learned(frames, **params):
    return taxonomy.learn(frames, MergeGenresParams(strategy="learned", **params), seed=0)


def named_groups(result) -> set[frozenset[str]]:
    return {frozenset(result["genres"][i] for i in group) for group in result["groups"]}


@pytest.mark.parametrize("cap", [2, 8])
def test_confusable_pairs_are_exactly_what_merges(cap):
    result = learned([paired_genres()], n_groups=4, max_group_size=cap)
    assert named_groups(result) == {frozenset(pair) for pair in PAIRS}


def test_the_size_cap_holds_at_every_step():
    rng = np.random.default_rng(1)
    frame = paired_genres()
    frame[FEATURES] = rng.normal(size=(len(frame), len(FEATURES)))  # everything confusable
    result = learned([frame], n_groups=3, max_group_size=3)
    assert all(len(group) <= 3 for group in result["groups"])
    assert sum(len(group) for group in result["groups"]) == 8
    for step in result["merges"]:
        assert sum(len(side) for side in step["merged"]) <= 3


def test_greedy_merges_follow_the_mutual_confusions():
    # genres 0..3; rows of 0 predicted as 1 (and back) most, then 2 <-> 3
    y = np.repeat(np.arange(4), 10)
    proba = np.eye(4)[y].copy()
    proba[0:6] = np.eye(4)[1]  # six rows of genre 0 look like genre 1
    proba[20:23] = np.eye(4)[3]  # three rows of genre 2 look like genre 3
    merges = taxonomy.greedy_merges(proba, y, max_group_size=2)
    assert [m["merged"] for m in merges] == [[[0], [1]], [[2], [3]]]
    assert [m["rows_gained"] for m in merges] == [6, 3]
    assert taxonomy.groups_after(merges, 4, 2) == [[0, 1], [2, 3]]


def test_the_same_params_give_the_same_taxonomy():
    frames = [paired_genres(seed=3)]
    first, second = learned(frames, n_groups=5, max_group_size=3), learned(frames, n_groups=5,
                                                                          max_group_size=3)
    assert first["merges"] == second["merges"] and first["groups"] == second["groups"]


def test_the_probe_sees_at_most_the_cap_per_genre_a_seeded_sample():
    frame = paired_genres(rows_per_genre=30)
    frame = frame[~((frame[GENRE_COLUMN] == "folk") & (frame.index % 2 == 0))]  # 15 folk rows
    capped = taxonomy.capped_per_genre(frame, 20, seed=1)
    sizes = capped[GENRE_COLUMN].value_counts()
    assert sizes["folk"] == 15 and (sizes.drop("folk") == 20).all()  # under the cap: all kept
    assert set(capped[ID_COLUMN]) <= set(frame[ID_COLUMN])
    again = taxonomy.capped_per_genre(frame, 20, seed=1)
    other = taxonomy.capped_per_genre(frame, 20, seed=2)
    assert capped.equals(again) and not capped.equals(other)
    # every genre within the cap: the very same frame, so today's taxonomy does not change
    assert taxonomy.capped_per_genre(frame, 30, seed=1) is frame


def test_learning_on_more_rows_than_the_cap_uses_the_sample():
    params = MergeGenresParams(strategy="learned", n_groups=4, max_group_size=2)
    many = [paired_genres(rows_per_genre=80, seed=5)]
    capped = taxonomy.learn(many, params, seed=0, rows_per_genre=40)
    sample = taxonomy.capped_per_genre(many[0], 40, seed=0)
    assert capped == taxonomy.learn([sample], params, seed=0, rows_per_genre=40)
    assert capped["probe_accuracy"] != taxonomy.learn(many, params, seed=0)["probe_accuracy"]
    assert named_groups(capped) == {frozenset(pair) for pair in PAIRS}


@pytest.mark.parametrize("params, message", [
    (dict(n_groups=9, max_group_size=4), "merge_genres.n_groups = 9: more than the 8 genres"),
    (dict(n_groups=3, max_group_size=2),
     "merge_genres.n_groups = 3 is impossible with merge_genres.max_group_size = 2: 8 genres "
     "need at least 4 classes of at most 2"),
])
def test_impossible_sizes_are_one_clear_error(params, message):
    from stages.merge_genres import check_sizes

    with pytest.raises(UserError, match=message):
        check_sizes(8, MergeGenresParams(strategy="learned", **params))


def test_a_group_size_below_one_is_rejected():
    from stages.params import validate

    with pytest.raises(UserError, match="merge_genres.max_group_size = 0: Input should be greater"):
        validate("merge_genres", {"strategy": "learned", "max_group_size": 0})


@pytest.mark.parametrize("strategy", ["none", "learned"])
def test_the_stage_only_clamps_n_groups_whatever_the_strategy(strategy):
    # a dataset with few genres must not fail a default (strategy none) `dvc repro`, and
    # the stage does not depend on the strategy (merge_genres refuses the clamped taxonomy)
    result = taxonomy.learn([paired_genres(rows_per_genre=10)],
                            MergeGenresParams(strategy=strategy, n_groups=66), seed=0)
    assert result["params"].n_groups == 8 and len(result["groups"]) == 8


def test_the_stage_never_reads_the_test_split(in_tmp_repo):
    split_dir = in_tmp_repo / "data" / "split"
    split_dir.mkdir(parents=True)
    frame = paired_genres(rows_per_genre=30)
    frame.iloc[0::2].to_parquet(split_dir / "train.parquet")
    frame.iloc[1::2].to_parquet(split_dir / "val.parquet")
    test = paired_genres(rows_per_genre=10, seed=9)
    test.to_parquet(split_dir / "test.parquet")
    params = in_tmp_repo / "params.yaml"
    params.write_text(params.read_text().replace("  strategy: none", "  strategy: learned")
                      .replace("  n_groups: 66", "  n_groups: 4"))
    taxonomy.main([])
    outputs = [in_tmp_repo / "taxonomies" / "learned.yaml", in_tmp_repo / "reports/taxonomy.json"]
    before = [path.read_bytes() for path in outputs]
    test[GENRE_COLUMN] = test[GENRE_COLUMN].sample(frac=1, random_state=0).to_numpy()
    test.to_parquet(split_dir / "test.parquet")
    taxonomy.main([])
    assert [path.read_bytes() for path in outputs] == before
    text = outputs[0].read_text()
    assert '"acoustic/folk":' in text and '["acoustic", "folk"]' in text
    assert "confused within" in text
    report = json.loads(outputs[1].read_text())
    assert report["genres"] == sorted(g for pair in PAIRS for g in pair)
    assert len(report["merges"]) == 7  # down to ceil(8 / max_group_size 20) = 1 class


def test_the_learned_file_is_a_merge_file(in_tmp_repo):
    from stages import merge_genres

    assert taxonomy.class_name(["b", "a", "d", "c"]) == "a/b/c/d"
    groups = [[0, 1], [2], [3, 4, 5, 6, 7]]
    genres = [f"g{i}" for i in range(8)]
    path = in_tmp_repo / "learned.yaml"
    path.write_text(taxonomy.taxonomy_yaml(groups, genres, [0.5, 0.0, 0.25],
                                           MergeGenresParams(n_groups=3, max_group_size=5)))
    read = merge_genres.read_groups(path)
    assert read == {"g3/g4/g5/+2": ["g3", "g4", "g5", "g6", "g7"], "g0/g1": ["g0", "g1"]}
    mapping = merge_genres.genre_mapping(read, set(genres), path)
    assert merge_genres.class_list(mapping) == ["g0/g1", "g2", "g3/g4/g5/+2"]


def test_accuracy_curve_sums_probabilities_per_class_and_skips_what_does_not_nest():
    genres = ["a", "b", "c", "d"]
    report = {"genres": genres, "merges": [
        {"classes_after": 3, "rows_gained": 5, "merged": [["a"], ["b"]]},
        {"classes_after": 2, "rows_gained": 2, "merged": [["c"], ["d"]]}]}
    test = pd.DataFrame({GENRE_COLUMN: ["a", "b", "c", "d"], LABEL_COLUMN: genres})
    # a predicted as b, b right, c predicted as d (0.6 vs 0.4), d right
    proba = np.array([[0.4, 0.6, 0, 0], [0, 1, 0, 0], [0, 0, 0.4, 0.6], [0, 0, 0, 1.0]])
    study = {"a": "a", "b": "b", "c": "cd", "d": "cd"}
    curves = taxonomy.accuracy_curves(proba, test, genres, report, study)
    learned_curve = curves["learned"].set_index("classes")
    assert list(learned_curve.index) == [4, 3, 2]
    assert learned_curve.loc[4, "accuracy"] == 0.5
    assert learned_curve.loc[3, "accuracy"] == 0.75  # a+b merged: row a now right
    assert learned_curve.loc[2, "accuracy"] == 1.0
    assert learned_curve.loc[2, "chance"] == 0.5
    assert curves["study"].to_dict("records") == [
        {"classes": 3, "accuracy": 0.75, "macro_f1": pytest.approx(0.5556, abs=1e-4),
         "chance": 0.5}]
    # a model trained on the study's classes: the learned levels that split "cd" don't nest
    merged_test = test.assign(**{LABEL_COLUMN: ["a", "b", "cd", "cd"]})
    merged_proba = np.array([[0.4, 0.6, 0], [0, 1, 0], [0, 0, 1.0], [0, 0, 1.0]])
    curves = taxonomy.accuracy_curves(merged_proba, merged_test, ["a", "b", "cd"], report, study)
    assert list(curves["learned"]["classes"]) == [2]
    assert list(curves["study"]["classes"]) == [3]


HIERARCHY = {  # 5 genres: a+b, then c+d, then (a,b)+(c,d); e stays alone
    "genres": ["a", "b", "c", "d", "e"],
    "merges": [{"classes_after": 4, "rows_gained": 9, "merged": [["a"], ["b"]]},
               {"classes_after": 3, "rows_gained": 5, "merged": [["c"], ["d"]]},
               {"classes_after": 2, "rows_gained": 1, "merged": [["a", "b"], ["c", "d"]]}],
}


def test_level_fold_sums_genre_probabilities_into_each_class():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(5), 20)
    names, fold = taxonomy.level_fold(HIERARCHY, HIERARCHY["genres"], 3)
    assert names == ["a/b", "c/d", "e"]
    coarse = proba @ fold
    assert np.allclose(coarse.sum(axis=1), 1.0)
    assert np.allclose(coarse[:, 0], proba[:, 0] + proba[:, 1])
    assert np.allclose(coarse[:, 1], proba[:, 2] + proba[:, 3])
    names, fold = taxonomy.level_fold(HIERARCHY, ["a/b", "c", "d", "e"], 2)  # a merged model
    assert names == ["a/b/c/d", "e"] and fold.tolist() == [[1, 0], [1, 0], [1, 0], [0, 1]]


@pytest.mark.parametrize("classes, level, message", [
    (["a", "b", "c", "d", "e"], 1, "--level 1: the model's genre hierarchy has 2 to 5 classes"),
    (["a", "b", "c", "d", "e"], 6, "--level 6: the model's genre hierarchy has 2 to 5 classes"),
    (["a/b", "c/d", "e"], 4, "--level 4: more than the model's 3 classes"),
    (["x", "y"], 2, "not from its genre hierarchy (x, y)"),
])
def test_impossible_levels_are_one_clear_error(classes, level, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        taxonomy.level_fold(HIERARCHY, classes, level)
