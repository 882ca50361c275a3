"""The input reader of predict (stages/inputs.py): each case a small file written here."""

import json
import math

import numpy as np
import pytest

from stages import common, inputs
from stages.common import UserError
from stages.inputs import InputReader, implausible, parse_column

FEATURES = ["danceability", "energy", "tempo"]
HEADER = "track_id,danceability,energy,tempo"
ROWS = ["a,0.1,0.2,100", "b,0.3,0.4,110", "c,0.5,0.6,120", "d,0.7,0.8,130"]


def read_all(path, features=FEATURES, **options):
    """Everything a reader yields, concatenated: (reader, values, positions, ids, messages)."""
    with InputReader(path, features, **options) as reader:
        chunks = list(reader.chunks())
    values = np.concatenate([c.values for c in chunks]) if chunks else np.zeros((0, len(features)))
    positions = np.concatenate([c.positions for c in chunks]).tolist() if chunks else []
    ids = [i for c in chunks if c.track_ids is not None for i in c.track_ids]
    messages = [message for c in chunks for _, message in c.problems]
    return reader, values, positions, ids, messages


def write(tmp_path, text, name="in.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def user_error(path, features=FEATURES, **options) -> str:
    with pytest.raises(UserError) as caught:
        read_all(path, features, **options)
    return str(caught.value)


# --- CSV ---------------------------------------------------------------------------------------


def test_ragged_rows_are_skipped_by_line_never_shifted(tmp_path):
    rows = [*ROWS]
    rows[1] += ",1"  # a trailing field, as some exports leave
    rows[3] = "d,0.7,0.8"  # a field short
    path = write(tmp_path, "\n".join([HEADER, *rows]) + "\n")
    _, values, positions, ids, messages = read_all(path)
    assert messages == [
        "line 3: 5 fields where the header has 4 columns; row skipped",
        "line 5: 3 fields where the header has 4 columns; row skipped",
    ]
    assert ids == ["a", "c"] and positions == [2, 4]
    np.testing.assert_array_equal(values, [[0.1, 0.2, 100], [0.5, 0.6, 120]])


def test_mostly_ragged_file_is_one_error(tmp_path):
    path = write(tmp_path, "\n".join([HEADER, *(r + ",1" for r in ROWS[:3]), ROWS[3]]))
    assert user_error(path) == (
        f"{path}: 3 of 4 rows have more or fewer fields than the header's 4 (line 1): a "
        "header that lacks a name, or a trailing separator? nothing was predicted")


def test_physical_line_numbers_after_blank_lines_and_a_multiline_field(tmp_path):
    text = (HEADER + ",comment\n"
            "\n"
            'a,0.1,0.2,100,"two\nlines"\n'
            "\n"
            "   \n"
            "b,0.3,0.4,fast,x\n")
    path = write(tmp_path, text)
    _, _, positions, ids, messages = read_all(path)
    assert positions == [3] and ids == ["a"]
    assert messages == ["line 7: column 'tempo': 'fast' is not a number; row skipped"]


def test_bom_and_crlf(tmp_path):
    path = write(tmp_path, "\r\n".join([HEADER, *ROWS]) + "\r\n", encoding="utf-8-sig")
    reader, values, positions, ids, _ = read_all(path)
    assert reader.has_track_id and not reader.missing and reader.notes == []
    assert ids == ["a", "b", "c", "d"] and positions == [2, 3, 4, 5]
    assert values[0].tolist() == [0.1, 0.2, 100]


@pytest.mark.parametrize("separator, said", [(";", "columns separated by ';'"),
                                             ("\t", "columns separated by tabs")])
def test_other_separators_read_the_same(tmp_path, separator, said):
    comma = read_all(write(tmp_path, "\n".join([HEADER, *ROWS])))
    path = write(tmp_path, "\n".join([HEADER, *ROWS]).replace(",", separator), "other.csv")
    reader, values, positions, ids, messages = read_all(path)
    assert reader.notes == [said] and messages == []
    np.testing.assert_array_equal(values, comma[1])
    assert (positions, ids) == (comma[2], comma[3])


def test_decimal_commas_refused_unless_asked(tmp_path):
    text = "\n".join([HEADER, *ROWS]).replace(",", ";").replace("0.", "0,")
    path = write(tmp_path, text)
    assert user_error(path) == (f"{path}: line 2: column 'danceability': '0,1' has a decimal "
                                "comma: pass --decimal , if the file writes decimals with a comma")
    _, values, _, _, messages = read_all(path, decimal=",")
    assert messages == [] and values[:, 0].tolist() == [0.1, 0.3, 0.5, 0.7]


def test_duplicated_column_is_one_error(tmp_path):
    path = write(tmp_path, "track_id,energy,danceability,Energy,tempo\na,1,2,3,4\n")
    assert user_error(path) == (
        f"{path}: 'energy' (column 2) and 'Energy' (column 4) name the same column: remove or "
        "rename all but one (or pick one with --column energy=FEATURE)")
    # a duplicated column nobody asked for is no problem
    path = write(tmp_path, "note,track_id,energy,danceability,tempo,note\nx,a,1,2,3,y\n", "ok.csv")
    assert read_all(path)[1].tolist() == [[2, 1, 3]]


def test_values_that_are_not_finite_or_too_big(tmp_path):
    huge = "9" * 400
    path = write(tmp_path, "\n".join([HEADER, "a,nan,0.2,100", "b,0.3,-inf,100",
                                      f"c,0.3,0.4,{huge}", "d,0.3,0.4,1e400", "e,,0.4,1"]))
    _, _, positions, _, messages = read_all(path)
    assert positions == []
    assert messages == [
        "line 2: column 'danceability': 'nan' is not a finite number; row skipped",
        "line 3: column 'energy': '-inf' is not a finite number; row skipped",
        f"line 4: column 'tempo': '{huge[:40]}… (400 characters)' does not fit a 64-bit float; "
        "row skipped",
        "line 5: column 'tempo': '1e400' does not fit a 64-bit float; row skipped",
        "line 6: column 'danceability': missing; row skipped",
    ]


def test_missing_features_are_reported_not_raised(tmp_path):
    path = write(tmp_path, "id,energy\nx,0.5\n")
    reader, values, _, ids, _ = read_all(path)
    assert reader.missing == ["danceability", "tempo"] and ids == ["x"]
    assert np.isnan(values[0, 0]) and values[0, 1] == 0.5 and np.isnan(values[0, 2])


def test_passthrough_column_is_kept_as_text(tmp_path):
    path = write(tmp_path, "Label,track_id,danceability,energy,tempo\nrock,a,1,2,3\n,b,1,2,x\n"
                           "pop,c,1,2,3\n")
    with InputReader(path, FEATURES, passthrough="label") as reader:
        chunks = list(reader.chunks())
    assert reader.has_passthrough
    assert [v for c in chunks for v in c.passthrough] == ["rock", "pop"]


def test_not_utf8_and_empty_files(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(("\n".join([HEADER, *ROWS]) + "\na,caf\xe9,1,1\n").encode("latin-1"))
    assert user_error(path) == f"{path}: line 6: not UTF-8 text (save the file as UTF-8)"
    assert user_error(write(tmp_path, "\n\n", "empty.csv")) == f"{tmp_path / 'empty.csv'}: file is empty"


# --- column names ------------------------------------------------------------------------------


def test_aliases_are_mapped_and_said(tmp_path):
    features = ["popularity", "duration_ms", "explicit", "mode", "energy"]
    path = write(tmp_path, "Track URI,Track Popularity,duration,explicit,mode,ENERGY\n"
                           "spotify:track:abc,50,215000,True,false,0.5\n"
                           "spotify:track:def,60,180000,FALSE,TRUE,0.6\n")
    reader, values, _, ids, messages = read_all(path, features)
    assert reader.notes == ["read column Track URI as track_id, Track Popularity as popularity, "
                            "duration as duration_ms"]
    assert messages == [] and ids == ["abc", "def"]
    assert values.tolist() == [[50, 215000, 1, 0, 0.5], [60, 180000, 0, 1, 0.6]]


def test_each_alias_in_the_table_is_read(tmp_path):
    for alias in inputs.ALIASES:
        value = "200000" if alias.target == "duration_ms" and alias.scale == 1 else "200"
        path = write(tmp_path, f"{alias.name},x\n{value},1\n", "alias.csv")
        features = [] if alias.target == "track_id" else [alias.target]
        reader, values, _, ids, _ = read_all(path, features)
        assert reader.notes == [f"read column {alias.name} as {alias.target}"
                                + (" (seconds × 1000)" if alias.scale != 1 else "")], alias
        if features:
            assert values[0, 0] == float(value) * alias.scale, alias
        else:
            assert ids == [value], alias


def test_exact_name_wins_over_an_alias(tmp_path):
    path = write(tmp_path, "duration,duration_ms,id,track_id\n3.5,200000,x,y\n")
    reader, values, _, ids, _ = read_all(path, ["duration_ms"])
    assert reader.notes == [] and values.tolist() == [[200000]] and ids == ["y"]


def test_competing_aliases_and_seconds_get_the_rename_line(tmp_path):
    path = write(tmp_path, "track_popularity,song_popularity\n1,2\n")
    assert user_error(path, ["popularity"]) == (
        f"{path}: columns 'track_popularity' and 'song_popularity' could each be popularity: "
        "rename the one to use to popularity, or pass --column track_popularity=popularity")
    path = write(tmp_path, "id,duration\na,215.3\nb,180\nc,240000\n", "seconds.csv")
    assert user_error(path, ["duration_ms"]) == (
        f"{path}: column 'duration' looks like seconds (median 215.3), the model takes "
        "duration_ms in milliseconds: pass --column duration=duration_s (or rename it "
        "duration_s)")
    reader, values, _, _, _ = read_all(path, ["duration_ms"],
                                       renames={"duration": "duration_s"})
    assert values[:, 0].tolist() == [215300, 180000, 240000000]
    assert reader.notes == ["read column id as track_id, duration as duration_ms (seconds × "
                            "1000, --column)"]


def test_renames_from_the_command_line(tmp_path):
    path = write(tmp_path, "length,energy,Energy\n200000,0.5,0.6\n")
    assert inputs.parse_renames(["length=duration_ms", "Energy=energy"]) == {
        "length": "duration_ms", "Energy": "energy"}
    reader, values, _, _, _ = read_all(path, ["duration_ms", "energy"],
                                       renames={"length": "duration_ms", "Energy": "energy"})
    assert values.tolist() == [[200000, 0.6]]  # the named one of two 'energy' columns
    for bad, message in [("length", "expected SOURCE=FEATURE"),
                         ("length=size", "'size' is not one of popularity, ")]:
        with pytest.raises(UserError, match=message):
            inputs.parse_renames([bad])
    with pytest.raises(UserError, match=r"--column nope=tempo: no column 'nope' \(the file has"):
        read_all(path, ["tempo"], renames={"nope": "tempo"})


# --- JSON --------------------------------------------------------------------------------------


def entries():
    return [{"id": "a", "danceability": 0.1, "energy": 0.2, "tempo": 100},
            None,
            {"id": "b", "danceability": "0.3", "energy": 0.4, "tempo": "110"},
            {"id": "c", "danceability": 0.5, "energy": 0.6, "tempo": 120}]


def test_json_quoted_numbers_nulls_and_the_three_shapes(tmp_path):
    expected = [[0.1, 0.2, 100], [0.3, 0.4, 110], [0.5, 0.6, 120]]
    for name, text in [("wrapped.json", json.dumps({"audio_features": entries()})),
                       ("bare.json", json.dumps(entries(), indent=2))]:
        reader, values, positions, ids, messages = read_all(write(tmp_path, text, name))
        assert reader.unit == "entry" and reader.notes == []
        assert values.tolist() == expected and positions == [1, 3, 4] and ids == ["a", "b", "c"]
        assert messages == ["entry 2: null (unknown track id?); skipped"]
    reader, values, positions, ids, _ = read_all(write(tmp_path, json.dumps(entries()[0]), "one.json"))
    assert values.tolist() == expected[:1] and positions == [1] and ids == ["a"]


def test_json_lines_count_physical_lines(tmp_path):
    text = "\n".join(json.dumps(e) for e in entries())
    text = text.replace("\nnull\n", "\nnull\n\n", 1)  # a blank line
    reader, values, positions, ids, messages = read_all(write(tmp_path, text, "songs.jsonl"))
    assert reader.unit == "line"
    assert positions == [1, 4, 5] and ids == ["a", "b", "c"]
    assert messages == ["line 2: null (unknown track id?); skipped"]


def test_json_values_that_are_not_finite_or_too_big(tmp_path):
    huge = "1" + "0" * 400
    text = ('[{"danceability": NaN, "energy": 1, "tempo": 1},'
            ' {"danceability": 1, "energy": -Infinity, "tempo": 1},'
            f' {{"danceability": 1, "energy": 1, "tempo": {huge}}},'
            ' {"danceability": 1, "energy": 1, "tempo": 1e400},'
            ' {"danceability": 1, "energy": 1, "tempo": [1]},'
            ' {"danceability": "fast", "energy": 1, "tempo": 1},'
            ' {"danceability": true, "energy": 1, "tempo": 1}, 42]')
    _, _, positions, _, messages = read_all(write(tmp_path, text, "bad.json"))
    assert positions == []
    assert messages == [
        "entry 1: field 'danceability': NaN is not a finite number; entry skipped",
        "entry 2: field 'energy': -Infinity is not a finite number; entry skipped",
        f"entry 3: field 'tempo': {huge[:40]}… (401 characters) does not fit a 64-bit float; "
        "entry skipped",
        "entry 4: field 'tempo': 1e400 does not fit a 64-bit float; entry skipped",
        "entry 5: field 'tempo': [1] is not a number; entry skipped",
        "entry 6: field 'danceability': \"fast\" is not a number; entry skipped",
        "entry 7: field 'danceability': true is not a number; entry skipped",
        "entry 8: 42 is not an object; skipped",
    ]


def test_json_field_absent_from_every_entry_is_missing(tmp_path):
    path = write(tmp_path, json.dumps([{"danceability": 1, "tempo": 2}, None]), "songs.json")
    reader, *_ = read_all(path)
    assert reader.missing == ["energy"] and reader.item == "field"
    nulls = write(tmp_path, "[null, null, null, null, null, {\"energy\": 1}]", "nulls.json")
    assert read_all(nulls, chunk_rows=2)[0].missing == ["danceability", "tempo"]


@pytest.mark.parametrize("block", [3, 7, 64])
def test_streamed_json_equals_the_whole_file_parse(tmp_path, monkeypatch, block):
    """Buffers far smaller than an entry: values and numbers cut at every place."""
    rng = np.random.default_rng(1)
    rows = [{"id": f"t{i}", "danceability": float(rng.random()), "energy": int(rng.integers(0, 10**6)),
             "tempo": str(round(float(rng.random()) * 200, 3)), "nested": {"x": [1, 2.5e-3]}}
            for i in range(40)]
    rows[17] = None
    text = json.dumps({"audio_features": rows, "more": [1, {"a": "]"}]}, indent=1)
    path = write(tmp_path, text, "big.json")
    monkeypatch.setattr(inputs.JsonValues, "BLOCK", block)
    _, values, positions, ids, messages = read_all(path, chunk_rows=6)
    whole = [(i + 1, r) for i, r in enumerate(json.loads(text)["audio_features"]) if r]
    assert positions == [i for i, _ in whole] and ids == [r["id"] for _, r in whole]
    np.testing.assert_array_equal(values, [[r["danceability"], r["energy"], float(r["tempo"])]
                                           for _, r in whole])
    assert messages == ["entry 18: null (unknown track id?); skipped"]


@pytest.mark.parametrize("text", [
    '[{"energy": 0.5,}]',
    '{"audio_features": [{"energy": 0.5}',
    '[{"energy": 0.5},\n {"energy": 0.6}\n\n  {"energy": 0.7}]',
    '[{"energy": 0.5}] [1]',
    '[{"energy": 0.5}, {"energy": 0.6, "tempo": 1.2.3}]',
    '{"a": 1}\n{"a": 2\n',
])
@pytest.mark.parametrize("block", [2, 5, 1 << 20])
def test_bad_json_is_reported_where_json_loads_reports_it(tmp_path, monkeypatch, text, block):
    try:  # JSON Lines are not json.loads' business: compare their last line alone
        json.loads(text)
    except json.JSONDecodeError as exc:
        if text.startswith('{"a"'):
            exc = pytest.raises(json.JSONDecodeError, json.loads, text.split("\n", 1)[1]).value
            exc.lineno += 1
        expected = f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    monkeypatch.setattr(inputs.JsonValues, "BLOCK", block)
    path = write(tmp_path, text, "bad.json")
    assert user_error(path, ["energy"]) == f"{path}: {expected}"


# --- chunks ------------------------------------------------------------------------------------


def test_chunked_read_equals_whole_read_with_bad_rows_on_both_sides_of_a_boundary(tmp_path):
    lines = [HEADER]
    for i in range(30):
        lines.append(f"t{i},{i / 100},{i / 50},{100 + i}")
    lines[4] = "t3,0.03,0.06"  # line 5, chunk 2 of 4-row chunks
    lines[8] = "t7,x,0.14,107"  # line 9: last row of chunk 2
    lines[9] = "t8,0.08,0.16,108,1"  # line 10: first row of chunk 3
    lines.insert(12, "")  # a blank line moves the rest down one
    lines[20] = "t19,0.19,,119"  # line 21
    path = write(tmp_path, "\n".join(lines) + "\n")
    whole = read_all(path)
    chunked = read_all(path, chunk_rows=4)
    np.testing.assert_array_equal(chunked[1], whole[1])
    assert chunked[2:] == whole[2:]
    assert whole[4] == [
        "line 5: 3 fields where the header has 4 columns; row skipped",
        "line 9: column 'danceability': 'x' is not a number; row skipped",
        "line 10: 5 fields where the header has 4 columns; row skipped",
        "line 21: column 'energy': missing; row skipped",
    ]
    assert len(whole[2]) == 26 and whole[2][-1] == 32
    with InputReader(path, FEATURES, chunk_rows=4) as reader:
        assert [len(c.values) + len(c.problems) for c in reader.chunks()] == [4] * 7 + [2]


# --- values and plausibility ------------------------------------------------------------------


def test_parse_column_reads_booleans_only_for_explicit_and_mode():
    values, problems = parse_column(["True", " false ", "1", "TRUE", "yes"], "explicit")
    assert values[:4].tolist() == [1, 0, 1, 1] and problems == {4: "'yes' is not a number"}
    values, problems = parse_column(["True", "0.5"], "energy")
    assert problems == {0: "'True' is not a number"} and values[1] == 0.5


RANGES = {"danceability": [0.0, 0.985], "tempo": [0.0, 243.4], "duration_ms": [8586, 5237295],
          "loudness": [-49.5, 4.5]}


def test_plausibility_rule():
    features = ["danceability", "tempo", "duration_ms", "loudness"]
    values = np.array([[0.5, 120, 200000, -5],     # fine
                       [73, 120, 200000, -5],      # danceability in percent
                       [0.5, 250, 200000, -5],     # fast, but a tempo
                       [0.5, 120, 215.3, -5],      # seconds
                       [0.5, 120, np.nan, -60],    # absent duration: not checked
                       [-0.3, 120, 60_000_000, 10]])
    flags = implausible(values, features, RANGES)
    assert flags.tolist() == [[False] * 4,
                              [True, False, False, False],
                              [False] * 4,
                              [False, False, True, False],
                              [False] * 4,
                              [True, False, True, False]]
    assert not implausible(values, features, None).any()


def test_plausibility_check_says_one_line_per_column_and_refuses_a_wrong_unit(tmp_path):
    features = ["danceability", "duration_ms"]
    check = inputs.PlausibilityCheck(tmp_path / "songs.csv", features, RANGES)
    first = np.array([[0.5, 200000], [0.5, 215.0], [0.5, 180000], [0.5, 190000]])
    assert check.skip(first, np.array([2, 3, 4, 5])).tolist() == [False, True, False, False]
    second = np.array([[0.5, 200000], [0.5, 3.5], [99, 200000]])
    assert check.skip(second, np.array([7, 8, 9])).tolist() == [False, True, True]
    check.check_majority()
    assert check.summary() == [
        "danceability: 1 of 7 values far outside the training range 0–0.985; rows skipped "
        "(first: line 9)",
        "duration_ms: 2 of 7 values look like seconds (outside 8,586–5,237,295 ms); rows "
        "skipped (first: line 3, 8)",
    ]
    wrong_unit = inputs.PlausibilityCheck(tmp_path / "songs.csv", features, RANGES)
    with pytest.raises(UserError) as caught:
        wrong_unit.skip(np.array([[0.5, 215.0], [0.5, 180.0], [0.5, 190000]]), np.arange(3))
    assert str(caught.value) == (
        f"{tmp_path / 'songs.csv'}: duration_ms: 2 of 3 values look like seconds (outside "
        "8,586–5,237,295 ms): multiply by 1000, or pass --column duration_ms=duration_s")


def test_feature_ranges():
    ranges = common.feature_ranges(np.array([[1.0, 5], [3, -2], [2, np.nan]]), ["a", "b"])
    assert ranges == {"a": [1.0, 3.0], "b": [-2.0, 5.0]}
    assert all(math.isfinite(v) for pair in ranges.values() for v in pair)
