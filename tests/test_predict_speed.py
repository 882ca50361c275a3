"""The benchmarks' bookkeeping: bench.predict_speed's measurement of a command, and the
pipeline bench's result file (the timings themselves are the benchmarks')."""

import sys

import pytest

from bench import predict_speed


def test_timed_reports_cpu_memory_and_the_tasks_own_seconds():
    line = "predict_many: 2 of 2 files, 10 rows -> out in 3.4 s (5.6 s in tasks)"
    measured = predict_speed.timed([sys.executable, "-c",
                                    f"import sys; print({line!r}, file=sys.stderr)"])
    assert measured["exit"] == 0 and measured["task_seconds"] == 5.6
    assert measured["seconds"] > 0 and measured["cpu_seconds"] >= 0
    assert measured["peak_rss_mb"] > 0


def test_timed_leaves_out_task_seconds_when_there_are_none_and_stops_on_failure():
    assert "task_seconds" not in predict_speed.timed([sys.executable, "-c", "pass"])
    with pytest.raises(SystemExit, match="failed"):
        predict_speed.timed([sys.executable, "-c", "raise SystemExit(3)"])


def test_bench_keeps_the_configs_it_did_not_measure_again(tmp_path):
    import json

    from bench.__main__ import kept_with

    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps({"recording-114": {"old": 1}, "recording-66": {"old": 2}}))
    results, command = kept_with(path, {"recording-66": {"new": 3}}, "python -m bench")
    assert results == {"recording-114": {"old": 1}, "recording-66": {"new": 3}}
    assert command == "python -m bench (with recording-114 kept from the previous run of the file)"
    assert kept_with(tmp_path / "none.json", {"a": {}}, "c") == ({"a": {}}, "c")
