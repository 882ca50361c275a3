import hashlib
import json

import pandas as pd
import pytest

from stages import split as split_stage
from stages.common import FEATURES, SPLITS
from stages.params import SplitParams
from tests.conftest import make_tracks


def test_clean_drops_index_na_and_duplicates(tracks):
    frame, counts = split_stage.clean(tracks)
    assert counts == {"rows_in": len(tracks), "dropped_na": 1, "dropped_duplicates": 1,
                      "rows_clean": len(tracks) - 2}
    assert list(frame.columns) == ["track_id", *FEATURES, "track_genre"]
    assert "Unnamed: 0" not in frame.columns
    assert frame["explicit"].dtype == "int64" and set(frame["explicit"]) <= {0, 1}


def test_clean_parses_text_booleans():
    raw = make_tracks()
    as_text = raw.assign(explicit=raw["explicit"].map({True: "True", False: "False"}))
    expected, _ = split_stage.clean(raw)
    frame, _ = split_stage.clean(as_text)
    assert frame["explicit"].tolist() == expected["explicit"].tolist()
    assert 0 < frame["explicit"].sum() < len(frame)


def _split(strategy, seed=42, tracks=None):
    frame, _ = split_stage.clean(tracks if tracks is not None else make_tracks(rows_per_genre=60))
    params = SplitParams(strategy=strategy, test_size=0.2, val_size=0.25, seed=seed)
    return frame, split_stage.assign_splits(frame, params), params


def test_group_split_keeps_each_track_in_one_split():
    frame, parts, params = _split("group")
    ids = [set(parts[n]["track_id"]) for n in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(len(parts[n]) for n in SPLITS) == len(frame)
    report = split_stage.split_report({}, frame, parts, params)
    assert report["shared_track_ids"]["total"] == 0
    assert report["repeated_track_ids"] == 5


def test_random_split_sizes_and_stratification():
    frame, parts, _ = _split("random")
    n = len(frame)
    assert len(parts["test"]) == pytest.approx(0.2 * n, abs=1)
    assert len(parts["val"]) == pytest.approx(0.25 * 0.8 * n, abs=2)
    for name in SPLITS:  # every genre in every split
        assert parts[name]["track_genre"].nunique() == frame["track_genre"].nunique()


def test_random_split_can_share_tracks_and_report_counts_it():
    # every track repeated under two genres: a row split must put some pairs apart
    base = make_tracks(rows_per_genre=60)
    twin = base.copy()
    twin["track_genre"] = twin["track_genre"] + "-twin"
    frame, parts, params = _split("random", tracks=pd.concat([base, twin], ignore_index=True))
    report = split_stage.split_report({}, frame, parts, params)
    assert report["shared_track_ids"]["total"] > 0


def test_seed_changes_the_split_and_same_seed_repeats_it():
    _, a, _ = _split("group", seed=1)
    _, b, _ = _split("group", seed=1)
    _, c, _ = _split("group", seed=2)
    assert all(a[n].equals(b[n]) for n in SPLITS)
    assert not a["test"]["track_id"].equals(c["test"]["track_id"])


def test_too_few_rows_is_a_clear_error():
    frame, _ = split_stage.clean(make_tracks(genres=("a", "b"), rows_per_genre=2))
    with pytest.raises(Exception, match="need at least 3 track_ids"):
        split_stage.assign_splits(frame.head(2), SplitParams())


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_main_twice_gives_byte_identical_outputs(in_tmp_repo, tracks_csv):
    raw = in_tmp_repo / "data" / "raw" / "tracks.csv"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(tracks_csv.read_bytes())
    split_stage.main([])
    first = _digests(in_tmp_repo / "data" / "split")
    metrics = json.loads((in_tmp_repo / "reports" / "data.json").read_text())
    split_stage.main([])
    assert _digests(in_tmp_repo / "data" / "split") == first
    assert set(first) == {"train.parquet", "val.parquet", "test.parquet"}
    assert metrics["cleaning"]["rows_clean"] == sum(metrics["splits"][n]["rows"] for n in SPLITS)


def test_missing_raw_file_is_a_clear_error(in_tmp_repo, capsys):
    with pytest.raises(SystemExit) as exit_info:
        split_stage.main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: data/raw/tracks.csv: file not found (run: dvc repro fetch)\n"
