import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from stages.common import AUDIO_FEATURES, FEATURES
from stages.params import validate
from stages.tf_setup import quiet_tensorflow
from tests.conftest import REPO, make_tracks, tiny_model

quiet_tensorflow()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "softmax.keras", "softmax",
                      {"epochs": 1, "batch_size": 32})


def run_predict(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "stages.predict", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


@pytest.fixture
def input_rows():
    rows = make_tracks(rows_per_genre=5).drop(columns=["Unnamed: 0", "track_genre"])
    return rows.head(10).reset_index(drop=True)


def test_happy_path_with_shuffled_and_extra_columns(model_file, input_rows, tmp_path):
    path, classes = model_file
    shuffled = input_rows[list(reversed(input_rows.columns))].assign(comment="extra")
    shuffled.to_csv(tmp_path / "in.csv", index=False)
    input_rows.to_csv(tmp_path / "ordered.csv", index=False)
    out = run_predict(path, tmp_path / "in.csv", "-k", 2, "-o", tmp_path / "out.csv")
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == ["track_id", "line", "genre_1", "prob_1", "genre_2", "prob_2"]
    assert table["track_id"].tolist() == input_rows["track_id"].tolist()
    assert set(table["genre_1"]) <= set(classes)
    assert (table["prob_1"] >= table["prob_2"]).all()
    ordered = run_predict(path, tmp_path / "ordered.csv", "-k", 2)
    assert pd.read_csv(tmp_path / "out.csv").equals(
        pd.read_csv(io.StringIO(ordered.stdout)))


def test_bad_rows_are_reported_and_skipped(model_file, input_rows, tmp_path):
    path, _ = model_file
    rows = input_rows.astype(object)
    rows.loc[2, "tempo"] = "fast"
    rows.loc[5, "energy"] = None
    rows.to_csv(tmp_path / "in.csv", index=False)
    out = run_predict(path, tmp_path / "in.csv")
    assert out.returncode == 0
    assert out.stderr.splitlines() == [
        f"{tmp_path / 'in.csv'}: line 4: column 'tempo': 'fast' is not a number; row skipped",
        f"{tmp_path / 'in.csv'}: line 7: column 'energy': missing; row skipped",
    ]
    table = pd.read_csv(io.StringIO(out.stdout))
    assert len(table) == 8 and 4 not in table["line"].tolist()


def test_no_usable_row_and_missing_files_exit_nonzero(model_file, input_rows, tmp_path):
    path, _ = model_file
    rows = input_rows.astype(object)
    rows["tempo"] = "x"
    rows.to_csv(tmp_path / "bad.csv", index=False)
    out = run_predict(path, tmp_path / "bad.csv")
    assert out.returncode == 2 and out.stderr.splitlines()[-1].endswith("no row could be predicted")
    missing = run_predict(tmp_path / "nope.keras", tmp_path / "bad.csv")
    assert missing.returncode == 2
    assert missing.stderr == f"error: {tmp_path / 'nope.keras'}: model file not found (train it: dvc repro, or get it: dvc pull)\n"
    no_input = run_predict(path, tmp_path / "nope.csv")
    assert no_input.returncode == 2 and "input file not found" in no_input.stderr
    input_rows.drop(columns=["tempo"]).to_csv(tmp_path / "cols.csv", index=False)
    cols = run_predict(path, tmp_path / "cols.csv")
    assert cols.returncode == 2 and "missing feature column(s) tempo" in cols.stderr
    input_rows.to_csv(tmp_path / "good.csv", index=False)
    (tmp_path / "junk.keras").write_text("not a zip")
    junk = run_predict(tmp_path / "junk.keras", tmp_path / "good.csv")
    assert junk.returncode == 2 and "not a model saved by this project" in junk.stderr


def test_class_list_travels_with_the_model(model_file, input_rows, tmp_path):
    path, classes = model_file
    input_rows.to_csv(tmp_path / "in.csv", index=False)
    out = run_predict(path, tmp_path / "in.csv", "-k", len(classes))
    table = pd.read_csv(io.StringIO(out.stdout))
    assert sorted(table.iloc[0][[f"genre_{i + 1}" for i in range(len(classes))]]) == classes


# --- models of the 13 audio features, and the audio-features API's JSON --------------

AUDIO_HINT = ("this model takes all 15 features; the published genre-classifier answers "
              "without them (python -m stages.predict genre-classifier FILE)")


@pytest.fixture(scope="module")
def audio_model_file(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "mlp-audio.keras", "mlp",
                      {"epochs": 1, "batch_size": 32, "hidden": [8]}, AUDIO_FEATURES)


def api_entries(rows: pd.DataFrame) -> list[dict]:
    """What GET /v1/audio-features?ids=... returns for these rows (in the API's key order)."""
    order = ["danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
             "instrumentalness", "liveness", "valence", "tempo"]
    entries = []
    for row in rows.to_dict("records"):
        tid = row["track_id"]
        entries.append({**{f: row[f] for f in order}, "type": "audio_features", "id": tid,
                        "uri": f"spotify:track:{tid}",
                        "track_href": f"https://api.spotify.com/v1/tracks/{tid}",
                        "analysis_url": f"https://api.spotify.com/v1/audio-analysis/{tid}",
                        "duration_ms": row["duration_ms"],
                        "time_signature": row["time_signature"]})
    return json.loads(json.dumps(entries))  # plain JSON values, as a client parses them


def test_audio_model_reads_13_shuffled_columns_and_api_json(audio_model_file, input_rows,
                                                            tmp_path):
    path, classes = audio_model_file
    columns = ["track_id", *AUDIO_FEATURES]
    shuffled = input_rows[[columns[i] for i in (9, 3, 0, 12, 5, 1, 13, 7, 2, 11, 4, 8, 6, 10)]]
    assert "popularity" not in shuffled and "explicit" not in shuffled
    shuffled.to_csv(tmp_path / "in.csv", index=False)
    from_csv = run_predict(path, tmp_path / "in.csv", "-k", 2)
    assert from_csv.returncode == 0 and from_csv.stderr == "", from_csv.stderr
    csv_table = pd.read_csv(io.StringIO(from_csv.stdout))
    assert list(csv_table.columns) == ["track_id", "line", "genre_1", "prob_1", "genre_2", "prob_2"]
    assert csv_table["track_id"].tolist() == input_rows["track_id"].tolist()
    assert set(csv_table["genre_1"]) <= set(classes)

    entries = api_entries(input_rows)
    entries.insert(2, None)  # entry 3: an unknown id
    entries.insert(7, None)  # entry 8
    wrapped = tmp_path / "songs.json"
    wrapped.write_text("\n  " + json.dumps({"audio_features": entries}, indent=1))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(entries))
    for source in (wrapped, bare):
        out = run_predict(path, source, "-k", 2)
        assert out.returncode == 0, out.stderr
        assert out.stderr.splitlines() == [
            f"{source}: entry 3: null (unknown track id?); skipped",
            f"{source}: entry 8: null (unknown track id?); skipped",
        ]
        table = pd.read_csv(io.StringIO(out.stdout))
        assert list(table.columns) == ["track_id", "entry", "genre_1", "prob_1", "genre_2",
                                       "prob_2"]
        assert table["entry"].tolist() == [1, 2, 4, 5, 6, 7, 9, 10, 11, 12]
        # same tracks, same answers as from the CSV
        pd.testing.assert_frame_equal(table.drop(columns=["entry"]),
                                      csv_table.drop(columns=["line"]))


def test_api_json_entries_with_bad_features_are_reported_and_skipped(audio_model_file,
                                                                    input_rows, tmp_path):
    path, _ = audio_model_file
    entries = api_entries(input_rows)
    del entries[1]["tempo"]
    entries[3]["energy"] = "loud"
    entries[4]["danceability"] = True  # a boolean is a number only for explicit and mode
    entries[8]["mode"] = True
    entries[5]["key"] = None
    entries.insert(6, 42)
    (tmp_path / "songs.json").write_text(json.dumps({"audio_features": entries}))
    out = run_predict(path, tmp_path / "songs.json")
    assert out.returncode == 0, out.stderr
    source = tmp_path / "songs.json"
    assert out.stderr.splitlines() == [
        f"{source}: entry 2: field 'tempo': missing; entry skipped",
        f"{source}: entry 4: field 'energy': \"loud\" is not a number; entry skipped",
        f"{source}: entry 5: field 'danceability': true is not a number; entry skipped",
        f"{source}: entry 6: field 'key': missing; entry skipped",
        f"{source}: entry 7: 42 is not an object; skipped",
    ]
    table = pd.read_csv(io.StringIO(out.stdout))
    assert table["entry"].tolist() == [1, 3, 8, 9, 10, 11]
    nulls = tmp_path / "nulls.json"
    nulls.write_text('{"audio_features": [null, null]}')
    none = run_predict(path, nulls)
    assert none.returncode == 2
    assert none.stderr.splitlines() == [
        f"{nulls}: entry 1: null (unknown track id?); skipped",
        f"{nulls}: entry 2: null (unknown track id?); skipped",
        f"error: {nulls}: no row could be predicted",
    ]


def test_all_features_model_names_the_missing_columns_and_the_published_model(
        model_file, audio_model_file, input_rows, tmp_path):
    path, _ = model_file
    input_rows[["track_id", *AUDIO_FEATURES]].to_csv(tmp_path / "songs.csv", index=False)
    out = run_predict(path, tmp_path / "songs.csv")
    assert out.returncode == 2
    assert out.stderr == (f"error: {tmp_path / 'songs.csv'}: missing feature column(s) "
                          f"popularity, explicit: {AUDIO_HINT}\n")
    (tmp_path / "songs.json").write_text(json.dumps(api_entries(input_rows)))
    out = run_predict(path, tmp_path / "songs.json")
    assert out.returncode == 2
    assert out.stderr == (f"error: {tmp_path / 'songs.json'}: missing feature field(s) "
                          f"popularity, explicit: {AUDIO_HINT}\n")
    input_rows.drop(columns=["explicit"]).to_csv(tmp_path / "one.csv", index=False)
    out = run_predict(path, tmp_path / "one.csv")
    assert out.stderr == (f"error: {tmp_path / 'one.csv'}: missing feature column(s) "
                          f"explicit: {AUDIO_HINT}\n")
    # an audio feature missing as well: the audio model would not do either, no hint
    input_rows[["track_id", *AUDIO_FEATURES[1:]]].to_csv(tmp_path / "less.csv", index=False)
    out = run_predict(path, tmp_path / "less.csv")
    assert out.returncode == 2
    assert out.stderr == (f"error: {tmp_path / 'less.csv'}: missing feature column(s) "
                          "popularity, duration_ms, explicit\n")
    audio_path, _ = audio_model_file
    out = run_predict(audio_path, tmp_path / "less.csv")
    assert out.returncode == 2
    assert out.stderr == f"error: {tmp_path / 'less.csv'}: missing feature column(s) duration_ms\n"


@pytest.mark.parametrize("text, message", [
    ('[{"energy": 0.5,}]', "not valid JSON (line 1, column 17: Expecting property name "
                           "enclosed in double quotes)"),
    ('{"audio_features": [{"energy": 0.5}', "not valid JSON (line 1, column 36: Expecting ',' "
                                            "delimiter)"),
    ('{"audio_features": 5}', 'expected a list of audio-feature objects or '
                              '{"audio_features": [...]}'),
])
def test_bad_json_is_one_clear_line(audio_model_file, tmp_path, text, message):
    path, _ = audio_model_file
    (tmp_path / "songs.json").write_text(text)
    out = run_predict(path, tmp_path / "songs.json")
    assert out.returncode == 2
    assert out.stderr == f"error: {tmp_path / 'songs.json'}: {message}\n"


def test_no_audio_hint_for_a_model_that_does_not_take_all_15(input_rows, tmp_path):
    from stages import model_files, models

    subset = ["popularity", "energy", "tempo"]  # a hand-made feature list
    model = models.build("softmax", input_rows[subset].to_numpy("float32"), 2,
                         validate("softmax", {}), subset)
    model_files.save_model(model, tmp_path / "subset.keras", ["a", "b"], subset)
    input_rows[["track_id", "energy", "tempo"]].to_csv(tmp_path / "songs.csv", index=False)
    out = run_predict(tmp_path / "subset.keras", tmp_path / "songs.csv")
    assert out.returncode == 2
    assert out.stderr == f"error: {tmp_path / 'songs.csv'}: missing feature column(s) popularity\n"


def test_top_k_is_a_stable_sort_of_the_probabilities():
    import numpy as np

    from stages.predict import top_k_classes

    rng = np.random.default_rng(0)
    proba = rng.random((500, 20)).astype("float32")
    proba[:, 5] = proba[:, 7]  # ties inside and at the edge of the top k
    proba[:50] = 0
    proba[:50, 3] = 1  # saturated rows: many classes at exactly 0
    proba[50:100] = proba[50:100].round(1)
    for k in (1, 2, 3, 5, 19, 20):
        np.testing.assert_array_equal(top_k_classes(proba, k),
                                      np.argsort(-proba, axis=1, kind="stable")[:, :k])


# --- reading real-world files (stages/inputs.py), in-process: one TensorFlow import -----------


def predict_here(capsys, *args):
    """(exit code, stdout, stderr lines) of predict run in this process."""
    from stages import predict

    try:
        predict.main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err.splitlines()


@pytest.fixture(scope="module")
def ranged_model_file(tmp_path_factory):
    """A softmax model that stores each feature's training range (ranges.json)."""
    from stages.common import feature_ranges
    from stages.split import clean

    path, _ = tiny_model(tmp_path_factory.mktemp("model") / "ranged.keras", "softmax",
                         {"epochs": 1, "batch_size": 32}, with_ranges=True)
    frame, _ = clean(make_tracks(rows_per_genre=30))  # what tiny_model trained on
    return path, feature_ranges(frame[FEATURES].to_numpy("float64"), FEATURES)


def csv_lines(rows: pd.DataFrame) -> list[str]:
    return rows.to_csv(index=False).splitlines()


def test_ragged_rows_are_skipped_never_shifted(model_file, input_rows, tmp_path, capsys):
    path, _ = model_file
    lines = csv_lines(input_rows)
    (tmp_path / "clean.csv").write_text("\n".join(lines) + "\n")
    shifted = [lines[0]] + [f"{i},{line}" for i, line in enumerate(lines[1:])]
    lines[2] += ",1"  # a trailing field: pandas used to shift every column of the file by one
    lines[5] = lines[5].rsplit(",", 1)[0]  # a field short
    (tmp_path / "ragged.csv").write_text("\n".join(lines) + "\n")
    code, clean, _ = predict_here(capsys, path, tmp_path / "clean.csv")
    code, ragged, err = predict_here(capsys, path, tmp_path / "ragged.csv")
    assert code == 0
    source = tmp_path / "ragged.csv"
    assert err == [f"{source}: line 3: 20 fields where the header has 19 columns; row skipped",
                   f"{source}: line 6: 18 fields where the header has 19 columns; row skipped"]
    expected = pd.read_csv(io.StringIO(clean))
    expected = expected[~expected["line"].isin([3, 6])].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(ragged)), expected)
    # every row ragged (a header without the index column's name): refused, nothing written
    (tmp_path / "shifted.csv").write_text("\n".join(shifted))
    code, out, err = predict_here(capsys, path, tmp_path / "shifted.csv", "-o", tmp_path / "o.csv")
    assert code == 2 and out == "" and not (tmp_path / "o.csv").exists()
    assert err == [f"error: {tmp_path / 'shifted.csv'}: 10 of 10 rows have more or fewer fields "
                   "than the header's 19 (line 1): a header that lacks a name, or a trailing "
                   "separator? nothing was predicted"]


def test_separators_decimal_commas_and_json_lines_give_the_same_predictions(
        model_file, input_rows, tmp_path, capsys):
    path, _ = model_file
    input_rows.to_csv(tmp_path / "comma.csv", index=False)
    input_rows.to_csv(tmp_path / "semicolon.csv", index=False, sep=";")
    input_rows.to_csv(tmp_path / "tab.tsv", index=False, sep="\t")
    input_rows.to_csv(tmp_path / "european.csv", index=False, sep=";", decimal=",")
    code, expected, err = predict_here(capsys, path, tmp_path / "comma.csv")
    assert code == 0 and err == []
    for name, options, note in [("semicolon.csv", [], "columns separated by ';'"),
                                ("tab.tsv", [], "columns separated by tabs"),
                                ("european.csv", ["--decimal", ","], "columns separated by ';'")]:
        code, out, err = predict_here(capsys, path, tmp_path / name, *options)
        assert code == 0 and err == [f"{tmp_path / name}: {note}"], err
        assert out == expected, name
    code, out, err = predict_here(capsys, path, tmp_path / "european.csv")
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith(
        f"error: {tmp_path / 'european.csv'}: line 2: column 'danceability': '0,")
    assert err[0].endswith("' has a decimal comma: pass --decimal , if the file writes "
                           "decimals with a comma")
    # JSON Lines with quoted numbers: the same answers, by line
    lines = [json.dumps({k: str(v) for k, v in row.items()}) for row in
             input_rows.to_dict("records")]
    (tmp_path / "songs.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = predict_here(capsys, path, tmp_path / "songs.jsonl")
    assert code == 0 and err == []
    table = pd.read_csv(io.StringIO(out))
    assert table["line"].tolist() == list(range(1, 11))
    pd.testing.assert_frame_equal(table.drop(columns=["line"]),
                                  pd.read_csv(io.StringIO(expected)).drop(columns=["line"]))


def test_chunked_predict_equals_whole_file_predict(model_file, tmp_path, capsys):
    path, _ = model_file
    rows = make_tracks(rows_per_genre=8).drop(columns=["Unnamed: 0", "track_genre"])
    lines = csv_lines(rows)
    lines[4] = lines[4] + ",extra"  # line 5: 2nd of chunk 2 (chunks of 4 records)
    lines[8] = lines[8].rsplit(",", 1)[0] + ",fast"  # line 9: last of chunk 2
    lines[9] = lines[9].rsplit(",", 2)[0]  # line 10: first of chunk 3
    lines.insert(12, "")  # a blank line: the rest one line down
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    whole = predict_here(capsys, path, tmp_path / "in.csv")
    chunked = predict_here(capsys, path, tmp_path / "in.csv", "--chunk-rows", 4)
    assert whole[0] == chunked[0] == 0
    assert chunked == whole
    source = tmp_path / "in.csv"
    assert whole[2][:3] == [
        f"{source}: line 5: 20 fields where the header has 19 columns; row skipped",
        f"{source}: line 9: column 'time_signature': 'fast' is not a number; row skipped",
        f"{source}: line 10: 17 fields where the header has 19 columns; row skipped",
    ]
    table = pd.read_csv(io.StringIO(whole[1]))
    assert len(table) == len(rows) - 3 and 13 not in table["line"].tolist()
    assert table["line"].iloc[-1] == len(rows) + 2  # header + blank line
    code, _, err = predict_here(capsys, path, tmp_path / "in.csv", "--chunk-rows", 4,
                                "-o", tmp_path / "out.csv")
    assert code == 0 and (tmp_path / "out.csv").read_text() == whole[1]
    # more than MAX_REPORTED_ROWS bad rows over many chunks: capped as before
    bad = [line.rsplit(",", 1)[0] + ",x" if 1 <= i <= 25 else line
           for i, line in enumerate(csv_lines(rows))]
    (tmp_path / "bad.csv").write_text("\n".join(bad) + "\n")
    code, _, err = predict_here(capsys, path, tmp_path / "bad.csv", "--chunk-rows", 4)
    assert len(err) == 21 and err[-1] == f"{tmp_path / 'bad.csv'}: ... 5 more rows skipped"
    assert err[19].startswith(f"{tmp_path / 'bad.csv'}: line 21: column 'time_signature'")


def test_implausible_values_are_counted_per_column_and_a_wrong_unit_refused(
        ranged_model_file, model_file, input_rows, tmp_path, capsys):
    path, ranges = ranged_model_file
    rows = input_rows.copy()
    rows.loc[1, "danceability"] = 73  # a percentage
    rows.loc[4, "duration_ms"] = 215  # seconds
    rows.loc[7, "duration_ms"] = 198
    rows.loc[8, "tempo"] = ranges["tempo"][1] * 1.1  # fast, but plausible
    rows.to_csv(tmp_path / "songs.csv", index=False)
    code, out, err = predict_here(capsys, path, tmp_path / "songs.csv")
    assert code == 0
    low, high = ranges["duration_ms"]
    assert err == [  # in the model's feature order
        f"{tmp_path / 'songs.csv'}: duration_ms: 2 of 10 values look like seconds (outside "
        f"{low:,.0f}–{high:,.0f} ms); rows skipped (first: line 6, 9)",
        f"{tmp_path / 'songs.csv'}: danceability: 1 of 10 values far outside the training range "
        f"0–{ranges['danceability'][1]:.4g}; rows skipped (first: line 3)",
    ]
    assert pd.read_csv(io.StringIO(out))["line"].tolist() == [2, 4, 5, 7, 8, 10, 11]
    # a model without ranges: no check (the others still predict them)
    code, out, err = predict_here(capsys, model_file[0], tmp_path / "songs.csv")
    assert code == 0 and err == [] and len(pd.read_csv(io.StringIO(out))) == 10
    seconds = input_rows.assign(duration_ms=input_rows["duration_ms"] / 1000)
    seconds.to_csv(tmp_path / "seconds.csv", index=False)
    code, out, err = predict_here(capsys, path, tmp_path / "seconds.csv", "-o", tmp_path / "o.csv")
    assert code == 2 and not (tmp_path / "o.csv").exists()
    assert err == [f"error: {tmp_path / 'seconds.csv'}: duration_ms: 10 of 10 values look like "
                   f"seconds (outside {low:,.0f}–{high:,.0f} ms): multiply by 1000, or pass "
                   "--column duration_ms=duration_s"]
    code, out, err = predict_here(capsys, path, tmp_path / "seconds.csv", "--column",
                                  "duration_ms=duration_s")
    assert code == 0 and len(pd.read_csv(io.StringIO(out))) == 10, err


def test_other_files_column_names(model_file, input_rows, tmp_path, capsys):
    path, _ = model_file
    input_rows.to_csv(tmp_path / "ours.csv", index=False)
    code, expected, _ = predict_here(capsys, path, tmp_path / "ours.csv")
    theirs = input_rows.rename(columns={"popularity": "track_popularity",
                                        "duration_ms": "duration", "track_id": "uri",
                                        "time_signature": "Time Signature", "energy": "ENERGY"})
    theirs["uri"] = "spotify:track:" + theirs["uri"]
    theirs["explicit"] = theirs["explicit"].map({True: "TRUE", False: "false"})
    theirs.to_csv(tmp_path / "theirs.csv", index=False)
    code, out, err = predict_here(capsys, path, tmp_path / "theirs.csv")
    assert code == 0 and out == expected
    assert err == [f"{tmp_path / 'theirs.csv'}: read column uri as track_id, track_popularity "
                   "as popularity, duration as duration_ms"]
    theirs["duration"] = theirs["duration"] / 1000
    theirs.to_csv(tmp_path / "seconds.csv", index=False)
    code, out, err = predict_here(capsys, path, tmp_path / "seconds.csv")
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'seconds.csv'}: column 'duration' looks like "
                             "seconds (median ")
    assert err[0].endswith("pass --column duration=duration_s (or rename it duration_s)")
    code, out, err = predict_here(capsys, path, tmp_path / "seconds.csv", "--column",
                                  "duration=duration_s")
    assert code == 0 and out == expected
    code, out, err = predict_here(capsys, path, tmp_path / "theirs.csv", "--column", "bad")
    assert code == 2 and err == ["error: --column bad: expected SOURCE=FEATURE (e.g. --column "
                                 "length=duration_ms)"]


def test_ranges_travel_in_the_model_file(ranged_model_file, model_file, tmp_path):
    import zipfile

    from stages.model_files import read_ranges

    path, ranges = ranged_model_file
    assert read_ranges(path) == ranges and read_ranges(model_file[0]) is None
    from stages import trees
    from stages.params import validate as check

    rng = np.random.default_rng(0)
    x, y = rng.random((60, len(FEATURES))).astype("float32"), np.repeat([0, 1, 2], 20)
    forest = trees.fit("forest", check("forest", {"n_estimators": 3}), x, y, None, None, 3)
    trees.save(forest, tmp_path / "forest.npz", ["a", "b", "c"], FEATURES, ranges=ranges)
    assert read_ranges(tmp_path / "forest.npz") == ranges  # tree files carry them too
    broken = tmp_path / "broken.keras"
    broken.write_bytes(model_file[0].read_bytes())
    with zipfile.ZipFile(broken, "a") as archive:
        archive.writestr("ranges.json", '{"tempo": [1, NaN]}')
    from stages.common import UserError

    with pytest.raises(UserError, match="not a model saved by this project"):
        read_ranges(broken)


# --- a model that takes missing features, answers at a level ---------------------------------

HIERARCHY = {"genres": ["acoustic", "blues", "chill", "dance"],
             "merges": [{"classes_after": 3, "rows_gained": 5, "merged": [["acoustic"], ["blues"]]},
                        {"classes_after": 2, "rows_gained": 3, "merged": [["chill"], ["dance"]]}]}


@pytest.fixture(scope="module")
def masked_model_file(tmp_path_factory):
    """A tiny masked MLP published the way stage publish does: its hierarchy and the test
    accuracy of a few missing-feature sets inside."""
    from stages import model_files, train
    from stages.common import feature_ranges
    from stages.models import MIN_FEATURES
    from stages.split import clean

    frame, _ = clean(make_tracks(rows_per_genre=30))
    frame["label"] = frame["track_genre"]
    classes = sorted(frame["label"].unique())
    params = validate("mlp", {"epochs": 2, "batch_size": 32, "hidden": [16], "embedding_dim": 4,
                              "feature_dropout": 0.2, "popularity_dropout": 0.5})
    model, _, _ = train.train("mlp", params, frame, frame, classes)
    path = tmp_path_factory.mktemp("masked") / "masked.keras"
    masking = {"min_features": MIN_FEATURES, "test_rows": 100,
               "test_accuracy": {"": 0.9, "popularity,explicit": 0.8,
                                 "popularity,explicit,time_signature": 0.75}}
    model_files.save_model(model, path, classes, FEATURES,
                           feature_ranges(frame[FEATURES].to_numpy("float64"), FEATURES),
                           {model_files.MISSING_MEMBER: masking,
                            model_files.TAXONOMY_MEMBER: HIERARCHY})
    return path


def _proba_of(model_path, rows, hidden=()):
    from stages import model_files

    model, _, _ = model_files.load_model(model_path)
    x = rows[FEATURES].to_numpy("float32").copy()
    x[:, [FEATURES.index(f) for f in hidden]] = np.nan
    return model_files.predict_proba(model, x)


def test_a_file_without_some_features_predicts_with_the_masked_model(
        masked_model_file, input_rows, tmp_path, capsys):
    rows = input_rows.drop(columns=["time_signature"])
    rows.to_csv(tmp_path / "no_ts.csv", index=False)
    code, out, err = predict_here(capsys, masked_model_file, tmp_path / "no_ts.csv", "-k", 4)
    assert code == 0, err
    source = tmp_path / "no_ts.csv"
    assert err == [
        f"{source}: popularity, explicit left out: popularity from another dataset or time does "
        "not mean what it meant in the training data (--use-popularity to use it)",
        f"{source}: predicting without popularity, explicit, time_signature: test accuracy "
        "0.750 (with every feature 0.900)"]
    table = pd.read_csv(io.StringIO(out))
    expected = _proba_of(masked_model_file, input_rows, ("popularity", "explicit", "time_signature"))
    got = np.zeros_like(expected)
    names = ["acoustic", "blues", "chill", "dance"]
    for rank in range(1, 5):
        got[np.arange(len(table)), [names.index(g) for g in table[f"genre_{rank}"]]] = \
            table[f"prob_{rank}"]
    assert np.allclose(got, expected, atol=1e-5)
    # --use-popularity: the file's popularity and explicit count again
    code, _, err = predict_here(capsys, masked_model_file, source, "--use-popularity")
    assert code == 0 and err == [f"{source}: predicting without time_signature: test accuracy "
                                 "not measured for this set of missing features (with every "
                                 "feature 0.900)"]


def test_eight_audio_features_predict_fewer_is_one_error(masked_model_file, input_rows, tmp_path,
                                                         capsys):
    from stages.models import MIN_FEATURES

    keep = AUDIO_FEATURES[:MIN_FEATURES]
    input_rows[["track_id", *keep]].to_csv(tmp_path / "eight.csv", index=False)
    code, out, _ = predict_here(capsys, masked_model_file, tmp_path / "eight.csv")
    assert code == 0 and len(pd.read_csv(io.StringIO(out))) == len(input_rows)
    fewer = keep[:-1]
    input_rows[["track_id", *fewer]].to_csv(tmp_path / "fewer.csv", index=False)
    code, out, err = predict_here(capsys, masked_model_file, tmp_path / "fewer.csv",
                                  "-o", tmp_path / "out.csv")
    assert code == 2 and out == "" and not (tmp_path / "out.csv").exists()
    absent = [f for f in FEATURES if f not in fewer]
    assert err == [f"error: {tmp_path / 'fewer.csv'}: only {len(fewer)} of the model's 15 features "
                   f"(missing column(s): {', '.join(absent)}): it needs at least {MIN_FEATURES}"]


def test_a_model_without_masking_still_needs_every_feature(model_file, input_rows, tmp_path,
                                                           capsys):
    input_rows.drop(columns=["popularity"]).to_csv(tmp_path / "in.csv", index=False)
    code, _, err = predict_here(capsys, model_file[0], tmp_path / "in.csv")
    assert code == 2 and err == [
        f"error: {tmp_path / 'in.csv'}: missing feature column(s) popularity: this model takes "
        "all 15 features; the published genre-classifier answers without them (python -m "
        "stages.predict genre-classifier FILE)"]


def test_answers_at_a_level_sum_the_genre_probabilities(masked_model_file, input_rows, tmp_path,
                                                        capsys):
    input_rows.to_csv(tmp_path / "in.csv", index=False)
    code, out, _ = predict_here(capsys, masked_model_file, tmp_path / "in.csv", "--level", 2,
                                "-k", 2)
    assert code == 0
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == ["track_id", "line", "class_1", "prob_1", "class_2", "prob_2"]
    assert np.allclose(table["prob_1"] + table["prob_2"], 1.0, atol=2e-5)
    proba = _proba_of(masked_model_file, input_rows, ("popularity", "explicit"))
    folded = {"acoustic/blues": proba[:, 0] + proba[:, 1], "chill/dance": proba[:, 2] + proba[:, 3]}
    for i, row in table.iterrows():
        assert row["prob_1"] == pytest.approx(folded[row["class_1"]][i], abs=1e-5)
    # the default answer names the group of the first genre, at the hierarchy's finest
    # level coarser than the default group level that the model allows
    code, out, _ = predict_here(capsys, masked_model_file, tmp_path / "in.csv", "-k", 1)
    assert list(pd.read_csv(io.StringIO(out)).columns) == ["track_id", "line", "genre_1", "prob_1"]


@pytest.mark.parametrize("level, message", [
    (1, "--level 1: the model's genre hierarchy has 2 to 4 classes"),
    (9, "--level 9: the model's genre hierarchy has 2 to 4 classes")])
def test_an_impossible_level_is_one_error(masked_model_file, input_rows, tmp_path, capsys,
                                          level, message):
    input_rows.to_csv(tmp_path / "in.csv", index=False)
    code, out, err = predict_here(capsys, masked_model_file, tmp_path / "in.csv", "--level", level)
    assert code == 2 and out == "" and err == [f"error: {message}"]


def test_level_needs_a_model_with_a_hierarchy(model_file, input_rows, tmp_path, capsys):
    input_rows.to_csv(tmp_path / "in.csv", index=False)
    code, _, err = predict_here(capsys, model_file[0], tmp_path / "in.csv", "--level", 2)
    assert code == 2 and err == [f"error: --level 2: {model_file[0]} carries no genre hierarchy "
                                 "(the published genre-classifier does: dvc repro publish)"]


def test_the_retired_audio_model_name_points_to_the_published_model(input_rows, tmp_path, capsys):
    input_rows.to_csv(tmp_path / "in.csv", index=False)
    code, _, err = predict_here(capsys, "genre-classifier-audio", tmp_path / "in.csv")
    assert code == 2 and err == [
        "error: genre-classifier-audio: retired: the published genre-classifier answers files "
        "with only the 13 audio features (python -m stages.predict genre-classifier FILE)"]
