import io
import subprocess
import sys

import pandas as pd
import pytest

from stages.params import validate
from stages.tf_setup import quiet_tensorflow
from tests.conftest import REPO, make_tracks

quiet_tensorflow()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from stages import model_files, train
    from stages.split import clean

    frame, _ = clean(make_tracks(rows_per_genre=30))
    frame["label"] = frame["track_genre"]
    classes = sorted(frame["label"].unique())
    params = validate("softmax", {"epochs": 1, "batch_size": 32})
    model, _, _ = train.train("softmax", params, frame, frame, classes)
    path = tmp_path_factory.mktemp("model") / "softmax.keras"
    model_files.save_model(model, path, classes)
    return path, classes


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
