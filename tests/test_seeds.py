"""bench.seeds: the spread of a network's test accuracy over seeds, and its table."""

import json

import pytest

from bench.seeds import spread


def test_spread_is_the_mean_sample_std_and_range():
    result = spread([0.30, 0.32, 0.34])
    assert result == {"seeds": 3, "mean": 0.32, "std": pytest.approx(0.02), "min": 0.30,
                      "max": 0.34}
    assert spread([0.3])["std"] is None  # one seed has no spread


def test_the_table_shows_every_seed_and_the_spread(tmp_path):
    from bench.table import seeds_rows

    runs = [{"seed": 42, "test_accuracy": 0.351}, {"seed": 43, "test_accuracy": 0.355}]
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps({"families": {"mlp": {
        "runs": runs, "test": spread([r["test_accuracy"] for r in runs])}}}))
    (row,) = seeds_rows(path)
    assert row["test accuracy per seed"] == "0.3510 (42), 0.3550 (43)"
    assert row["mean"] == "0.3530" and row["range"] == "0.40 points"
