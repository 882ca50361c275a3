import json

import pytest

from stages import merge_genres
from stages.common import UserError
from stages.params import MergeGenresParams, validate

GENRES = {"pop", "k-pop", "j-pop", "rock", "metal", "blues"}


def test_disabled_keeps_every_genre():
    params = MergeGenresParams(enabled=False, groups={"pop": ["k-pop"]})
    mapping = merge_genres.genre_mapping(params, GENRES)
    assert mapping == {g: g for g in GENRES}
    assert merge_genres.class_list(mapping) == sorted(GENRES)


def test_enabled_folds_genres_into_targets():
    params = MergeGenresParams(enabled=True, groups={"pop": ["k-pop", "j-pop"], "rock": ["metal"]})
    mapping = merge_genres.genre_mapping(params, GENRES)
    assert mapping["k-pop"] == "pop" and mapping["metal"] == "rock" and mapping["blues"] == "blues"
    assert merge_genres.class_list(mapping) == ["blues", "pop", "rock"]


def test_target_may_be_a_new_name():
    params = MergeGenresParams(enabled=True, groups={"asian-pop": ["k-pop", "j-pop"]})
    assert merge_genres.class_list(merge_genres.genre_mapping(params, GENRES)) == [
        "asian-pop", "blues", "metal", "pop", "rock"]


def test_unknown_genre_is_a_clear_error():
    params = MergeGenresParams(enabled=True, groups={"pop": ["k-pop", "c-pop"]})
    with pytest.raises(UserError, match="merge_genres.groups names genre\\(s\\) not in the data: c-pop"):
        merge_genres.genre_mapping(params, GENRES)


def test_genre_under_two_targets_is_a_clear_error():
    with pytest.raises(UserError, match="genre 'metal' is listed under two targets: 'rock' and 'pop'"):
        validate("merge_genres", {"enabled": True, "groups": {"rock": ["metal"], "pop": ["metal"]}})


def test_main_writes_labels_and_classes(in_tmp_repo, tracks_csv):
    from stages import split as split_stage

    raw = in_tmp_repo / "data" / "raw" / "tracks.csv"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(tracks_csv.read_bytes())
    split_stage.main([])
    params = in_tmp_repo / "params.yaml"
    params.write_text(params.read_text().replace("  enabled: false", "  enabled: true")
                      .replace("pop: [cantopop", "chill: [acoustic]\n    pop: [cantopop"))
    # the default groups name genres the synthetic data lacks
    with pytest.raises(SystemExit):
        merge_genres.main([])
    params.write_text("merge_genres:\n  enabled: true\n  groups:\n    chill: [acoustic]\n")
    merge_genres.main([])
    classes = json.loads((in_tmp_repo / "data/labeled/classes.json").read_text())
    assert classes == ["blues", "chill", "dance"]
    import pandas as pd
    train = pd.read_parquet(in_tmp_repo / "data/labeled/train.parquet")
    assert set(train["label"]) <= set(classes)
    assert (train.loc[train["track_genre"] == "acoustic", "label"] == "chill").all()
