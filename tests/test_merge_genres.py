import json

import pytest

from stages import merge_genres
from stages.common import UserError
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
    merge_genres.main([])
    classes = json.loads((in_tmp_repo / "data/labeled/classes.json").read_text())
    assert classes == ["blues", "chill", "dance"]
    import pandas as pd
    train = pd.read_parquet(in_tmp_repo / "data/labeled/train.parquet")
    assert set(train["label"]) <= set(classes)
    assert (train.loc[train["track_genre"] == "acoustic", "label"] == "chill").all()
