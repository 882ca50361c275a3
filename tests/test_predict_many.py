"""Batch predict over a directory on a Dask LocalCluster (2 worker processes): the same bytes
as the single-process predict, a bad file reported by name while the others finish."""

import re
import subprocess
import sys

import pandas as pd
import pytest

from stages.common import UserError
from stages.tf_setup import quiet_tensorflow
from tests.conftest import REPO, make_tracks, tiny_model

quiet_tensorflow()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny MLP (a network: its float sums depend on which rows share a call)."""
    return tiny_model(tmp_path_factory.mktemp("model") / "mlp.keras", "mlp",
                      {"epochs": 1, "batch_size": 32, "hidden": [8]})[0]


def tracks(rows: int, seed: int) -> pd.DataFrame:
    frame = make_tracks(rows_per_genre=rows // 4 + 1, seed=seed)
    return frame.drop(columns=["Unnamed: 0", "track_genre"]).head(rows).reset_index(drop=True)


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    """CSV, Parquet and JSON Lines files, one with bad rows on both sides of a chunk boundary,
    one larger than a position group (PREDICT_BATCH rows), and one that cannot be read."""
    folder = tmp_path_factory.mktemp("inputs")
    tracks(1500, 1).to_csv(folder / "a.csv", index=False)
    bad_rows = tracks(300, 2).astype(object)
    bad_rows.loc[99, "tempo"] = "fast"
    bad_rows.loc[101, "energy"] = None
    bad_rows.to_csv(folder / "b.csv", index=False)
    tracks(700, 3).to_parquet(folder / "c.parquet", index=False)
    tracks(50, 4).to_json(folder / "d.jsonl", orient="records", lines=True)
    tracks(20, 5).drop(columns=["tempo"]).to_csv(folder / "e_missing_column.csv", index=False)
    (folder / "f_broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (folder / "notes.md").write_text("not an input")
    return folder


def single_process(model_file, path, out, *extra):
    """predict with its default chunk size (predict_many is run with 100-row chunks)."""
    return subprocess.run([sys.executable, "-m", "stages.predict", str(model_file), str(path),
                           "-o", str(out), *map(str, extra)],
                          cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as local, Client(local) as client:
        yield client


def test_a_local_cluster_writes_the_single_process_bytes_and_reports_a_bad_file(
        model_file, input_dir, cluster, tmp_path):
    from stages.predict import Options
    from stages.predict_many import input_files, run_files

    files = input_files(input_dir)
    assert [p.name for p in files] == ["a.csv", "b.csv", "c.parquet", "d.jsonl",
                                       "e_missing_column.csv", "f_broken.parquet"]
    said = []
    results = run_files(cluster, model_file, files, tmp_path / "out",
                        Options(k=2, chunk_rows=100), said.append)
    # each file was answered in a worker process, not here
    assert [r.name for r in results] == [p.name for p in files]
    assert [r.rows for r in results] == [1500, 298, 700, 50, 0, 0]
    assert [r.name for r in results if r.error] == ["e_missing_column.csv", "f_broken.parquet"]
    assert f"error: {input_dir / 'e_missing_column.csv'}: missing feature column(s) tempo" in said
    assert any(line.startswith(f"error: {input_dir / 'f_broken.parquet'}: not a readable "
                               "Parquet file") for line in said)
    assert f"{input_dir / 'b.csv'}: line 101: column 'tempo': 'fast' is not a number; " \
           "row skipped" in said
    assert f"{input_dir / 'b.csv'}: line 103: column 'energy': missing; row skipped" in said
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.csv", "b.csv", "c.csv",
                                                                    "d.csv"]
    for path in files[:4]:
        expected = tmp_path / "single" / f"{path.stem}.csv"
        done = single_process(model_file, path, expected, "-k", 2)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out" / f"{path.stem}.csv").read_bytes() == expected.read_bytes(), \
            path.name


def test_parquet_answers_as_the_same_rows_in_a_csv(model_file, input_dir, tmp_path):
    rows = pd.read_parquet(input_dir / "c.parquet")
    rows.to_csv(tmp_path / "c.csv", index=False)
    for path in (input_dir / "c.parquet", tmp_path / "c.csv"):
        assert single_process(model_file, path, tmp_path / f"{path.suffix[1:]}.out").returncode == 0
    parquet = pd.read_csv(tmp_path / "parquet.out")
    csv = pd.read_csv(tmp_path / "csv.out")
    assert list(parquet.columns)[:2] == ["track_id", "row"]
    assert parquet["row"].tolist() == list(range(1, 701))
    assert parquet.drop(columns="row").equals(csv.drop(columns="line"))


def test_the_command_exits_nonzero_after_finishing_the_good_files(model_file, input_dir,
                                                                   tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "stages.predict_many", str(model_file),
                           str(input_dir), "-o", str(out), "--workers", "2", "-k", "2",
                           "--chunk-rows", "100"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("predict_many: 4 of 6 files, 2548 rows -> ")
    assert last.endswith("failed: e_missing_column.csv, f_broken.parquet")
    assert re.search(r" in \d+\.\d s \(\d+\.\d s in tasks\); failed", last), last
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.csv", "c.csv", "d.csv"]
    expected = tmp_path / "a.csv"
    assert single_process(model_file, input_dir / "a.csv", expected, "-k", 2).returncode == 0
    assert (out / "a.csv").read_bytes() == expected.read_bytes()


def test_input_files_refuse_an_empty_directory_and_clashing_names(tmp_path):
    from stages.predict_many import input_files

    with pytest.raises(UserError, match="no input files"):
        input_files(tmp_path)
    (tmp_path / "x.csv").write_text("a\n1\n")
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(UserError, match="x.csv and x.parquet would both write x.csv"):
        input_files(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        input_files(tmp_path / "x.csv")


def test_the_model_travels_as_bytes_and_is_written_once_per_content(model_file):
    from stages.predict_many import ModelBytes

    first = ModelBytes(model_file.name, model_file.read_bytes()).local_file()
    again = ModelBytes(model_file.name, model_file.read_bytes()).local_file()
    other = ModelBytes(model_file.name, model_file.read_bytes() + b"x").local_file()
    assert first == again != other and first.read_bytes() == model_file.read_bytes()


def _worker_environment():
    import os

    return {name: os.environ.get(name)
            for name in ("MALLOC_TRIM_THRESHOLD_", "SPOTIFY_GENRE_THREADS", "OMP_NUM_THREADS")}


def test_local_workers_share_the_cores_and_keep_freed_memory(monkeypatch):
    """Each local worker computes with its share of the cores, and starts without Dask's
    MALLOC_TRIM_THRESHOLD_ (which made predict fault its chunks' pages in again and again)."""
    from stages.predict_many import connect

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("SPOTIFY_GENRE_THREADS", "4")
    with connect("local", 2) as client:
        seen = list(client.run(_worker_environment).values())
    assert seen == [{"MALLOC_TRIM_THRESHOLD_": None, "SPOTIFY_GENRE_THREADS": "2",
                     "OMP_NUM_THREADS": "2"}] * 2
