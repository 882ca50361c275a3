"""Synthetic Spotify-schema data made by the tests themselves, and repo-copy helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.workspace import commit_all, copy_project, run, set_params
from stages.common import RAW_COLUMNS

REPO = Path(__file__).resolve().parents[1]


def make_tracks(genres=("acoustic", "blues", "chill", "dance"), rows_per_genre=40,
                seed=0) -> pd.DataFrame:
    """A raw-schema frame: separable genres, repeated track_ids, one duplicate, one NA row."""
    rng = np.random.default_rng(seed)
    rows = []
    for g_index, genre in enumerate(genres):
        for i in range(rows_per_genre):
            centre = g_index / max(len(genres) - 1, 1)
            rows.append({
                "track_id": f"t{g_index:02d}{i:04d}",
                "artists": f"artist {i % 7}",
                "album_name": f"album {i % 5}",
                "track_name": f"song {g_index}-{i}",
                "popularity": int(rng.integers(0, 100)),
                "duration_ms": int(rng.integers(60_000, 400_000)),
                "explicit": bool(rng.random() < 0.1),
                "danceability": float(np.clip(centre + rng.normal(0, 0.1), 0, 1)),
                "energy": float(np.clip(1 - centre + rng.normal(0, 0.1), 0, 1)),
                "key": int(rng.integers(0, 12)),
                "loudness": float(-20 * centre + rng.normal(-5, 1)),
                "mode": int(rng.integers(0, 2)),
                "speechiness": float(rng.random() * 0.3),
                "acousticness": float(rng.random()),
                "instrumentalness": float(rng.random() ** 4),
                "liveness": float(rng.random()),
                "valence": float(rng.random()),
                "tempo": float(80 + 60 * centre + rng.normal(0, 5)),
                "time_signature": int(rng.choice([3, 4, 4, 4, 5])),
                "track_genre": genre,
            })
    frame = pd.DataFrame(rows)
    # The same track under a second genre: identical features, another label.
    for i in range(5):
        repeat = frame.iloc[i].copy()
        repeat["track_genre"] = genres[1]
        frame.loc[len(frame)] = repeat
    frame.loc[len(frame)] = frame.iloc[len(frame) - 1]  # one exact duplicate row
    na_row = frame.iloc[7].copy()
    na_row["track_id"] = "t-na"
    na_row["artists"] = None
    frame.loc[len(frame)] = na_row
    frame.insert(0, "Unnamed: 0", np.arange(len(frame)))
    return frame[RAW_COLUMNS]


def tiny_model(path: Path, family: str, params: dict, features=None,
               with_ranges: bool = False) -> tuple[Path, list[str]]:
    """A network trained for a moment on make_tracks rows, saved at ``path``: (path, classes)."""
    from stages import model_files, train  # noqa: PLC0415
    from stages.common import FEATURES, feature_ranges  # noqa: PLC0415
    from stages.params import validate  # noqa: PLC0415
    from stages.split import clean  # noqa: PLC0415

    features = features or FEATURES
    frame, _ = clean(make_tracks(rows_per_genre=30))
    frame["label"] = frame["track_genre"]
    classes = sorted(frame["label"].unique())
    model, _, _ = train.train(family, validate(family, params), frame, frame, classes,
                              features=features)
    ranges = feature_ranges(frame[features].to_numpy("float64"), features) if with_ranges \
        else None
    model_files.save_model(model, path, classes, features, ranges=ranges)
    return path, classes


def write_tracks_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write as the published file is written: an unnamed index column first."""
    body = frame.drop(columns=["Unnamed: 0"])
    body.index = frame["Unnamed: 0"].to_numpy()
    compression = "gzip" if path.name.endswith(".gz") else None
    body.to_csv(path, compression=compression)
    return path


@pytest.fixture
def tracks() -> pd.DataFrame:
    return make_tracks()


@pytest.fixture
def tracks_csv(tmp_path, tracks) -> Path:
    return write_tracks_csv(tracks, tmp_path / "tracks.csv")


@pytest.fixture
def in_tmp_repo(tmp_path, monkeypatch) -> Path:
    """cwd = a temp dir holding params.yaml, so stages' main() can run there."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_repo(dest: Path) -> Path:
    return copy_project(REPO, dest)


def run_cmd(args: list[str], cwd: Path, env_extra: dict | None = None, check=True,
            timeout=900) -> subprocess.CompletedProcess:
    result = run(args, cwd, env_extra, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


TINY_TRAINING = {  # seconds, not minutes: these runs test the wiring, not the accuracy
    "softmax": {"epochs": 2, "batch_size": 64},
    "mlp": {"epochs": 2, "batch_size": 64, "hidden": [16, 16]},
    "lstm": {"epochs": 2, "batch_size": 64, "step_units": 8, "lstm_units": [8]},
    "forest": {"n_estimators": 5},
    "boosting": {"max_rounds": 5},
}


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory):
    """A repo copy after one full `dvc repro` on synthetic data, committed (read-only use:
    tests that change it work on ``clone_repo(reproduced_repo...)``)."""
    root = tmp_path_factory.mktemp("e2e")
    csv = write_tracks_csv(make_tracks(rows_per_genre=80), root / "tracks.csv.gz")
    repo = copy_repo(root / "repo")
    # synthetic data is another table on purpose: unpin the published data's hashes
    set_params(repo, {**TINY_TRAINING, "fetch": {"content_sha256": None, "sha256": None}})
    commit_all(repo, "tiny params, synthetic data")
    env = {"SPOTIFY_TRACKS_URL": str(csv)}
    result = run_cmd(["dvc", "repro"], repo, env)
    commit_all(repo, "run")
    return repo, env, result


def clone_repo(source: Path, dest: Path) -> Path:
    """A full copy (git history, DVC cache, outputs) to change freely."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def real_data_url() -> str | None:
    return os.environ.get("SPOTIFY_TRACKS_URL")
