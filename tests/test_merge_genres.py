import json

import numpy as np
import pytest

from stages import merge_genres
from stages.common import Fold, UserError, read_fold
from tests.conftest import REPO

GENRES = {"pop", "k-pop", "j-pop", "rock", "metal", "blues"}


def write_groups(tmp_path, text):
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    return path


def test_disabled_keeps_every_genre():
    mapping = merge_genres.genre_mapping(None, GENRES)
    assert mapping == {g: g for g in GENRES}
    assert merge_genres.class_list(mapping) == sorted(GENRES)


def test_enabled_folds_genres_into_targets():
    mapping = merge_genres.genre_mapping({"pop": ["k-pop", "j-pop"], "rock": ["metal"]}, GENRES)
    assert mapping["k-pop"] == "pop" and mapping["metal"] == "rock" and mapping["blues"] == "blues"
    assert merge_genres.class_list(mapping) == ["blues", "pop", "rock"]


def test_target_may_be_a_new_name():
    mapping = merge_genres.genre_mapping({"asian-pop": ["k-pop", "j-pop"]}, GENRES)
    assert merge_genres.class_list(mapping) == ["asian-pop", "blues", "metal", "pop", "rock"]


def test_unknown_genre_is_a_clear_error():
    with pytest.raises(UserError, match="groups.yaml: names genre\\(s\\) not in the data: c-pop"):
        merge_genres.genre_mapping({"pop": ["k-pop", "c-pop"]}, GENRES, "groups.yaml")


def test_groups_file_is_read_and_checked(tmp_path):
    good = write_groups(tmp_path, "pop: [k-pop, j-pop]\nrock: [metal]\n")
    assert merge_genres.read_groups(good) == {"pop": ["k-pop", "j-pop"], "rock": ["metal"]}
    twice = write_groups(tmp_path, "rock: [metal]\npop: [metal]\n")
    with pytest.raises(UserError, match="genre 'metal' is listed under two classes: 'rock' and 'pop'"):
        merge_genres.read_groups(twice)
    not_list = write_groups(tmp_path, "rock: metal\n")
    with pytest.raises(UserError, match="rock: must be a list of genre names"):
        merge_genres.read_groups(not_list)
    broken = write_groups(tmp_path, "rock: [metal\n")
    with pytest.raises(UserError, match="not valid YAML"):
        merge_genres.read_groups(broken)
    with pytest.raises(UserError, match="file not found"):
        merge_genres.read_groups(tmp_path / "missing.yaml")


def test_the_study_merge_file_folds_48_genres_into_5_classes():
    groups = merge_genres.read_groups(REPO / "taxonomies" / "study.yaml")
    assert sorted(groups) == ["country", "dance", "house", "pop", "rock"]
    assert sum(len(g) for g in groups.values()) == 48  # 114 - 48 + 0 new names = 66 classes


def test_main_writes_labels_and_classes(in_tmp_repo, tracks_csv):
    from stages import split as split_stage

    raw = in_tmp_repo / "data" / "raw" / "tracks.csv"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(tracks_csv.read_bytes())
    split_stage.main([])
    params = in_tmp_repo / "params.yaml"
    params.write_text(params.read_text().replace("  strategy: none", "  strategy: study"))
    groups = in_tmp_repo / "taxonomies" / "study.yaml"
    groups.parent.mkdir()
    groups.write_text((REPO / "taxonomies" / "study.yaml").read_text())
    # the study's groups name genres the synthetic data lacks
    with pytest.raises(SystemExit):
        merge_genres.main([])
    groups.write_text("chill: [acoustic]\n")
    labeled = in_tmp_repo / "data/labeled"
    import pandas as pd

    # the default (train_on: genres): the labels stay genres, the fold says where they go
    merge_genres.main([])
    assert json.loads((labeled / "classes.json").read_text()) == [
        "acoustic", "blues", "chill", "dance"]
    train = pd.read_parquet(labeled / "train.parquet")
    assert (train["label"] == train["track_genre"]).all()
    fold = read_fold(labeled / "fold.json")
    assert fold.genres == ["acoustic", "blues", "chill", "dance"]
    assert fold.classes == ["blues", "chill", "dance"]
    assert (fold.relabel(train).loc[train["track_genre"] == "acoustic", "label"] == "chill").all()
    np.testing.assert_allclose(fold.apply(np.array([[0.4, 0.3, 0.2, 0.1]])), [[0.3, 0.6, 0.1]])
    # train_on: classes retrains on the merged classes: no fold
    params.write_text(params.read_text().replace("  train_on: genres", "  train_on: classes"))
    merge_genres.main([])
    classes = json.loads((labeled / "classes.json").read_text())
    assert classes == ["blues", "chill", "dance"]
    train = pd.read_parquet(labeled / "train.parquet")
    assert set(train["label"]) <= set(classes)
    assert (train.loc[train["track_genre"] == "acoustic", "label"] == "chill").all()
    assert read_fold(labeled / "fold.json") is None


def test_the_labeled_splits_of_a_fold_are_those_of_no_merge_byte_for_byte(in_tmp_repo,
                                                                         tracks_csv):
    """So DVC sees the training stages' inputs unchanged: switching the strategy with
    train_on: genres retrains nothing."""
    from stages import split as split_stage

    raw = in_tmp_repo / "data" / "raw" / "tracks.csv"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(tracks_csv.read_bytes())
    split_stage.main([])
    groups = in_tmp_repo / "taxonomies" / "study.yaml"
    groups.parent.mkdir()
    groups.write_text("chill: [acoustic, blues]\n")
    labeled = in_tmp_repo / "data/labeled"
    merge_genres.main([])
    unmerged = {p.name: p.read_bytes() for p in labeled.iterdir() if p.name != "fold.json"}
    assert read_fold(labeled / "fold.json") is None
    params = in_tmp_repo / "params.yaml"
    params.write_text(params.read_text().replace("  strategy: none", "  strategy: study"))
    merge_genres.main([])
    assert {p.name: p.read_bytes() for p in labeled.iterdir() if p.name != "fold.json"} == unmerged
    assert read_fold(labeled / "fold.json").classes == ["chill", "dance"]


@pytest.mark.parametrize("spec, message", [
    ({"fold": {"genres": ["a", "b"], "to": ["x"]}}, "one class for each of distinct genres"),
    ({"fold": {"genres": ["a"]}}, "not a fold"),
    ({"classes": []}, "not written by merge_genres"),
])
def test_a_damaged_fold_file_is_one_clear_error(tmp_path, spec, message):
    path = tmp_path / "fold.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(UserError, match=message) as error:
        read_fold(path)
    assert str(path) in str(error.value)


def test_a_fold_refuses_labels_it_does_not_know():
    import pandas as pd

    fold = Fold(["a", "b"], ["x", "x"])
    with pytest.raises(UserError, match="labels not among its genres: c"):
        fold.relabel(pd.DataFrame({"label": ["a", "c"]}))


def test_a_fold_of_other_genres_than_the_model_learned_is_refused():
    from stages.common import answer_classes

    fold = Fold(["a", "b"], ["x", "x"])
    assert answer_classes(None, ["a", "b"], "models/mlp.keras") == ["a", "b"]
    assert answer_classes(fold, ["a", "b"], "models/mlp.keras") == ["x"]
    with pytest.raises(UserError) as error:
        answer_classes(fold, ["a", "b", "c"], "models/mlp.keras")
    assert str(error.value) == ("models/mlp.keras learned other classes than "
                                "data/labeled/fold.json folds (3 against 2): re-run dvc repro")
