import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stages import split as split_stage
from stages.common import FEATURES, SPLITS, UserError, write_parquet
from stages.params import SplitParams
from tests.conftest import REPO, make_tracks


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


@pytest.mark.parametrize("strategy, unit", [
    ("recording", "recordings"), ("group", "track_ids"), ("random", "rows"),
])
def test_too_few_rows_is_a_clear_error(strategy, unit):
    frame, _ = split_stage.clean(make_tracks(genres=("a", "b"), rows_per_genre=2))
    with pytest.raises(UserError, match=f"need at least 3 {unit} to make train/val/test, got 2"):
        split_stage.assign_splits(frame.head(2), SplitParams(strategy=strategy))


def test_recording_is_the_default():
    assert SplitParams().strategy == "recording"


# --- recording split ----------------------------------------------------------

def _twins_and_chains():
    """make_tracks plus feature twins (a copy of a row under a new track_id and another
    genre) and chains A-B-C (B: A's features under a new track_id; C: B's track_id
    with other features and genre). Returns raw tracks, twin pairs, chains (track_ids)."""
    base = make_tracks(rows_per_genre=60)
    # the 4 x 60 generated rows; make_tracks appends repeats, a duplicate, an NA row
    generated = base.iloc[:240]
    extra, twins, chains = [], [], []
    for i in range(10, 240, 4):
        row = generated.iloc[i].copy()
        twin = row.copy()
        twin["track_id"] = f"twin-{row['track_id']}"
        twin["track_genre"] = generated["track_genre"].iloc[(i + 60) % 240]
        extra.append(twin)
        twins.append((row["track_id"], twin["track_id"]))
    for i in range(8, 240, 4):
        a = generated.iloc[i].copy()
        b = a.copy()
        b["track_id"] = f"chain-{a['track_id']}"
        c = b.copy()
        c["popularity"] = (a["popularity"] + 1) % 100
        c["danceability"] = 1 - a["danceability"]
        c["track_genre"] = generated["track_genre"].iloc[(i + 120) % 240]
        extra += [b, c]
        chains.append((a["track_id"], b["track_id"]))
    raw = pd.concat([base, pd.DataFrame(extra)], ignore_index=True)
    raw["Unnamed: 0"] = range(len(raw))
    return raw, twins, chains


def _split_of(parts):
    return {tid: name for name in SPLITS for tid in parts[name]["track_id"]}


def _apart(parts, pairs):
    where = _split_of(parts)
    return [pair for pair in pairs if where[pair[0]] != where[pair[1]]]


def test_recording_split_keeps_feature_twins_and_chains_together():
    raw, twins, chains = _twins_and_chains()
    frame, parts, params = _split("recording", tracks=raw)
    assert sum(len(parts[n]) for n in SPLITS) == len(frame)
    assert _apart(parts, twins) == []
    assert _apart(parts, chains) == []
    # C (features unlike A's) sits with A only through B's track_id
    rows = pd.concat([parts[n] for n in SPLITS])
    for _, b in chains:
        assert rows[rows["track_id"] == b]["danceability"].nunique() == 2
    report = split_stage.split_report({}, frame, parts, params)
    assert report["shared_track_ids"]["total"] == 0
    assert report["shared_feature_vectors"] == {"train_val": 0, "train_test": 0, "val_test": 0,
                                                "total": 0}
    # 240 generated rows, each one recording with its repeat, twin or chain
    assert report["recording_groups"] == 240
    assert report["rows_in_multi_row_recordings"] == 5 * 2 + len(twins) * 2 + len(chains) * 3
    assert report["largest_recording_rows"] == 3
    json.dumps(report)  # plain values only


def test_group_split_separates_some_twins_and_chains_the_recording_split_keeps():
    # the data above can fail the test above: group ignores feature links
    raw, twins, chains = _twins_and_chains()
    frame, parts, params = _split("group", tracks=raw)
    assert _apart(parts, twins) and _apart(parts, chains)
    report = split_stage.split_report({}, frame, parts, params)
    assert report["shared_track_ids"]["total"] == 0
    separated = _apart(parts, twins) + _apart(parts, chains)
    assert report["shared_feature_vectors"]["total"] == len(separated)


def test_recording_split_sizes_follow_test_and_val_size_over_recordings():
    raw, _, _ = _twins_and_chains()
    frame, parts, _ = _split("recording", tracks=raw)
    recordings = split_stage.recording_ids(frame)
    per_split = {n: len(set(split_stage.recording_ids(parts[n]))) for n in SPLITS}
    assert sum(per_split.values()) == len(set(recordings)) == 240
    assert per_split["test"] == 48 and per_split["val"] == 48  # 0.2 * 240; 0.25 * 192
    for name in SPLITS:  # stratified by primary genre: every genre in every split
        assert parts[name]["track_genre"].nunique() == frame["track_genre"].nunique()


def test_recording_ids_link_by_track_id_or_identical_features_transitively():
    features = {f: 0 for f in FEATURES}
    frame = pd.DataFrame([
        {"track_id": "a", **features, "popularity": 1, "track_genre": "x"},
        {"track_id": "b", **features, "popularity": 1, "track_genre": "y"},  # a's twin
        {"track_id": "b", **features, "popularity": 2, "track_genre": "z"},  # b's track
        {"track_id": "c", **features, "popularity": 3, "track_genre": "x"},  # alone
        {"track_id": "d", **features, "popularity": 2, "track_genre": "x"},  # row 2's twin
    ])
    assert split_stage.recording_ids(frame).tolist() == [0, 0, 0, 3, 0]


def test_recording_primary_genre_is_most_frequent_then_alphabetical():
    keys = [0, 0, 0, 5, 5, 7]
    genres = pd.Series(["rock", "pop", "rock", "pop", "jazz", "soul"])
    primary = split_stage._most_frequent(keys, genres)
    assert primary.to_dict() == {0: "rock", 5: "jazz", 7: "soul"}


def test_recording_split_splits_recordings_stratified_by_their_most_frequent_genre():
    # chains carry A's genre twice and C's once: most frequent and alphabetically
    # first differ for half of them, and so would the stratified split
    raw, _, _ = _twins_and_chains()
    frame, parts, params = _split("recording", tracks=raw)
    keys = split_stage.recording_ids(frame)
    counts = frame.assign(key=keys).groupby(["key", "track_genre"]).size().reset_index(name="n")
    primary = (counts.sort_values(["key", "n", "track_genre"], ascending=[True, False, True])
               .groupby("key")["track_genre"].first())
    assert (primary != frame.groupby(keys)["track_genre"].min()).sum() > 10
    expected = split_stage._three_way(primary.index.to_numpy(), primary.to_numpy(), params)
    for name in SPLITS:
        rows = frame[np.isin(keys, expected[name])]
        assert sorted(parts[name]["track_id"]) == sorted(rows["track_id"])


def test_recording_split_is_byte_identical_on_rerun(tmp_path):
    raw, _, _ = _twins_and_chains()
    for run in ("a", "b"):
        frame, parts, _ = _split("recording", tracks=raw.copy())
        for name in SPLITS:
            write_parquet(tmp_path / run / f"{name}.parquet", parts[name])
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) == 3


def test_recording_split_does_not_depend_on_the_string_hash_seed(tmp_path):
    # a set or dict iterated in hash order would change the split between processes
    script = (
        "import sys; from pathlib import Path\n"
        "from stages import split; from stages.common import write_parquet\n"
        "from stages.params import SplitParams\n"
        "from tests.test_split import _twins_and_chains\n"
        "frame, _ = split.clean(_twins_and_chains()[0])\n"
        "parts = split.assign_splits(frame, SplitParams(val_size=0.25))\n"
        "for name, part in parts.items():\n"
        "    write_parquet(Path(sys.argv[1]) / f'{name}.parquet', part)\n"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / seed)], cwd=REPO, env=env,
                       check=True, timeout=300)
    assert _digests(tmp_path / "1") == _digests(tmp_path / "2")


def _old_group_split(frame, params):
    """assign_splits' group branch before the recording strategy, verbatim."""
    primary = frame.groupby("track_id", sort=True)["track_genre"].min()
    parts = split_stage._three_way(primary.index.to_numpy(), primary.to_numpy(), params)
    out = {}
    for name, ids in parts.items():
        order = pd.Series(np.arange(len(ids)), index=ids)
        rows = frame[frame["track_id"].isin(ids)]
        rank = order.loc[rows["track_id"]].to_numpy()
        rows = rows.iloc[np.argsort(rank, kind="stable")]
        out[name] = rows.reset_index(drop=True)
    return out


@pytest.mark.parametrize("seed", [1, 42])
def test_group_split_is_unchanged(seed):
    raw, _, _ = _twins_and_chains()
    frame, parts, params = _split("group", seed=seed, tracks=raw)
    expected = _old_group_split(frame, params)
    for name in SPLITS:
        pd.testing.assert_frame_equal(parts[name], expected[name])


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
