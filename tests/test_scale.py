"""The scaling benchmark's enlarged data: deterministic, copies in their original's recording,
small jitter; and the growth fit it reports."""

import json

import numpy as np
import pandas as pd
import pytest

from bench.scale import CONTINUOUS, enlarge, extrapolate, first_wall, fit_exponent
from stages.split import SplitParams, assign_splits, clean, recording_ids
from tests.conftest import make_tracks


def test_enlarged_data_is_deterministic_and_each_size_holds_the_smaller_ones():
    raw = make_tracks()
    four = enlarge(raw, 4)
    assert four.equals(enlarge(raw, 4))
    assert len(four) == 4 * len(raw)
    assert four.head(2 * len(raw)).equals(enlarge(raw, 2))  # copy c draws the same at any size
    assert four.head(len(raw)).drop(columns="Unnamed: 0").equals(raw.drop(columns="Unnamed: 0"))
    assert four["Unnamed: 0"].tolist() == list(range(len(four)))
    assert not enlarge(raw, 2, seed=1).equals(enlarge(raw, 2))
    with pytest.raises(ValueError):
        enlarge(raw, 0)


def test_copies_are_jittered_a_little_within_range_and_keep_everything_else():
    raw = make_tracks()
    copy = enlarge(raw, 2).tail(len(raw)).reset_index(drop=True)
    fixed = [c for c in raw.columns if c not in CONTINUOUS and c != "Unnamed: 0"]
    assert copy[fixed].equals(raw[fixed])  # track_id, names, genre, discrete features
    for column in CONTINUOUS:
        moved = (copy[column] - raw[column]).abs()
        assert (moved > 0).mean() > 0.5, column  # really jittered
        assert moved.max() <= 6 * 0.01 * raw[column].std(), column  # six sigmas of JITTER
        assert copy[column].between(raw[column].min(), raw[column].max()).all(), column
    assert copy["duration_ms"].dtype == raw["duration_ms"].dtype


def test_an_original_and_its_copies_are_one_recording_in_one_split():
    raw = make_tracks()
    frame, _ = clean(enlarge(raw, 3))
    ids = pd.Series(recording_ids(frame), index=frame.index)
    # every track_id is in exactly one recording (its original and its two copies)
    assert ids.groupby(frame["track_id"]).nunique().max() == 1
    assert frame.groupby("track_id").size().min() >= 3
    splits = assign_splits(frame, SplitParams(strategy="recording", test_size=0.2,
                                              val_size=0.2, seed=0))
    owner = {}
    for name, part in splits.items():
        for track in part["track_id"].unique():
            assert owner.setdefault(track, name) == name, track


def test_growth_exponent_and_the_first_wall():
    rows = [100_000, 200_000, 400_000]
    assert fit_exponent(rows, [10, 20, 40]) == pytest.approx(1.0)
    assert fit_exponent(rows, [10, 40, 160]) == pytest.approx(2.0)
    assert fit_exponent(rows[:1], [10]) is None
    sizes = [{"rows_clean": n, "stages": {
        "linear": {"seconds": n / 1e4, "peak_rss_mb": 500 + n / 1e3},
        "square": {"seconds": (n / 1e5) ** 2 * 60, "peak_rss_mb": 300}}} for n in rows]
    walls = extrapolate({"sizes": sizes})
    assert walls["linear"]["time_exponent"] == pytest.approx(1.0)
    # 24 GB at 1 MB per 1,000 rows over a 500 MB base
    assert walls["linear"]["rows_at_memory_wall"] == pytest.approx((24 * 1024 - 500) * 1e3, rel=1e-3)
    assert walls["square"]["rows_at_memory_wall"] is None  # flat RSS: no memory wall
    # 8 h at 60 s * (n / 1e5) ** 2: n = 1e5 * sqrt(480)
    assert walls["square"]["rows_at_time_wall"] == pytest.approx(1e5 * np.sqrt(480), rel=1e-3)
    flat = extrapolate({"sizes": [{"rows_clean": n, "stages": {"start-up": {
        "seconds": 10 + n / 1e5, "peak_rss_mb": 300}}} for n in rows]})["start-up"]
    assert flat["time_exponent"] < 0.5  # a fixed cost: extrapolated as linear, not flatter
    assert flat["rows_at_time_wall"] == pytest.approx(4e5 * 8 * 3600 / 14, rel=1e-3)
    assert first_wall(walls) == ("square", "time", walls["square"]["rows_at_time_wall"])


def test_result_files_record_no_path_of_the_machine(tmp_path, monkeypatch):
    from bench.workspace import shown_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    shown = shown_command("bench.scale", ["--out", "/elsewhere/results",
                                          "--models-dir", str(tmp_path / "models"), "--rows", "5"])
    assert shown == "python -m bench.scale --out <path> --models-dir models --rows 5"


def test_a_timed_command_reports_its_exit_cpu_time_and_memory(tmp_path):
    import sys

    from bench.workspace import timed_command

    # half a second of CPU, with a 200 MB array held
    busy = ("import time, numpy as np; a = np.ones(25_000_000); t = time.process_time()\n"
            "while time.process_time() - t < 0.5: a.sum()\nraise SystemExit(3)")
    measured = timed_command([sys.executable, "-c", busy], tmp_path)
    assert measured["exit"] == 3
    assert measured["cpu_seconds"] >= 0.5 and measured["seconds"] >= 0.5
    assert measured["peak_rss_mb"] >= 190


def test_one_dvc_repro_is_measured_whole_and_stage_by_stage(tmp_path):
    """The benchmark runs `dvc repro` once, as the README does, and still gets each stage's
    wall time, CPU time and peak RSS from the stage's own process."""
    import subprocess
    import sys

    from bench.workspace import timed_repro

    # each stage: 0.3 s of CPU with a 100 MB array held, then its output
    (tmp_path / "busy.py").write_text(
        "import sys, time, numpy as np\na = np.ones(12_500_000); t = time.process_time()\n"
        "while time.process_time() - t < 0.3: a.sum()\nopen(sys.argv[1], 'w').write('done')\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  first:\n    cmd: python -m busy a.txt\n    outs: [a.txt]\n"
        "  second:\n    cmd: python -m busy b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path,
                   check=True)
    whole, stages = timed_repro(tmp_path, {})
    assert list(stages) == ["first", "second"]
    for measured in stages.values():
        assert measured["cpu_seconds"] >= 0.3 and measured["seconds"] >= 0.3
        assert measured["peak_rss_mb"] >= 95
    assert whole["seconds"] >= sum(m["seconds"] for m in stages.values())
    assert whole["cpu_seconds"] >= sum(m["cpu_seconds"] for m in stages.values())
    assert whole["peak_rss_mb"] >= max(m["peak_rss_mb"] for m in stages.values())
    assert timed_repro(tmp_path, {})[1] == {}  # nothing changed: dvc runs no stage


def test_bench_writes_its_results_into_an_output_folder_that_did_not_exist(tmp_path, monkeypatch):
    """The results come after a long run: a missing --out folder must not lose them."""
    import bench.__main__ as bench_main

    monkeypatch.setattr(bench_main, "run_config", lambda name, *args: {"measured": name})
    monkeypatch.setattr(bench_main, "markdown", lambda results, command: f"{command}\n")
    out = tmp_path / "not" / "yet"
    bench_main.main(["--configs", "recording-114", "--out", str(out)])
    assert json.loads((out / "pipeline.json").read_text()) == {
        "recording-114": {"measured": "recording-114"}}
    assert (out / "pipeline.md").read_text() == "python -m bench --configs recording-114\n"
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.json", "pipeline.md"]
