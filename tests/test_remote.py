"""A DVC remote round trip: push, clone elsewhere, pull, `dvc artifacts get`, predict.
No retraining anywhere: the clone's pipeline is up to date straight after `dvc pull`."""

import re

import pandas as pd
import pytest

from tests.conftest import clone_repo, commit_all, make_tracks, run_cmd

pytestmark = pytest.mark.slow

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "maintainer", "GIT_AUTHOR_EMAIL": "m@example.invalid",
                "GIT_COMMITTER_NAME": "maintainer", "GIT_COMMITTER_EMAIL": "m@example.invalid"}


def test_push_clone_pull_artifacts_get_and_predict(reproduced_repo, tmp_path):
    source, env, _ = reproduced_repo
    repo = clone_repo(source, tmp_path / "repo")
    storage = tmp_path / "storage"
    run_cmd(["dvc", "remote", "add", "-d", "storage", str(storage)], repo, env)
    commit_all(repo, "Add a local-directory DVC remote")
    pushed = run_cmd(["dvc", "push"], repo, env)
    assert re.search(r"\d+ files? pushed", pushed.stdout), pushed.stdout
    # a release: GTO tags name the artifact versions `dvc artifacts get` resolves
    for name in ("genre-classifier", "genre-classifier-lstm"):
        run_cmd(["gto", "register", name, "--version", "v1.0.0"], repo, GIT_IDENTITY)

    clone = tmp_path / "clone"
    run_cmd(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models").exists() and not (clone / "data").exists()
    # no SPOTIFY_TRACKS_URL here: the data comes from the remote, not from fetch
    run_cmd(["dvc", "pull"], clone)
    for name in ("genre-classifier", "softmax", "mlp", "lstm"):
        assert (clone / f"models/{name}.keras").read_bytes() == \
            (repo / f"models/{name}.keras").read_bytes()
    assert run_cmd(["dvc", "status"], clone).stdout.strip() == "Data and pipelines are up to date."
    assert "Running stage" not in run_cmd(["dvc", "repro"], clone).stdout

    # a user who wants only the model: no clone, no pipeline
    fetched = tmp_path / "user" / "genre-classifier.keras"
    fetched.parent.mkdir()
    run_cmd(["dvc", "artifacts", "get", str(repo), "genre-classifier", "-o", str(fetched)],
            fetched.parent)
    assert fetched.read_bytes() == (repo / "models/genre-classifier.keras").read_bytes()
    lstm = fetched.parent / "lstm.keras"
    run_cmd(["dvc", "artifacts", "get", str(repo), "genre-classifier-lstm", "--rev", "v1.0.0",
             "-o", str(lstm)], fetched.parent)
    assert lstm.read_bytes() == (repo / "models/lstm.keras").read_bytes()
    # any commit, with no release tag: `dvc get` by path
    mlp = fetched.parent / "mlp.keras"
    run_cmd(["dvc", "get", str(repo), "models/mlp.keras", "-o", str(mlp)], fetched.parent)
    assert mlp.read_bytes() == (repo / "models/mlp.keras").read_bytes()

    tracks = make_tracks(rows_per_genre=3, seed=7).drop(columns=["Unnamed: 0", "track_genre"])
    tracks.to_csv(fetched.parent / "my_tracks.csv", index=False)
    predicted = run_cmd(["python", "-m", "stages.predict", str(fetched),
                         str(fetched.parent / "my_tracks.csv"), "-o",
                         str(fetched.parent / "predictions.csv")], clone)
    table = pd.read_csv(fetched.parent / "predictions.csv")
    assert len(table) == len(tracks) and "genre_1" in table, predicted.stderr
    assert set(table["genre_1"]) <= {"acoustic", "blues", "chill", "dance"}
    # a tree family travels the same way, as plain arrays
    forest = fetched.parent / "forest.npz"
    run_cmd(["dvc", "get", str(repo), "models/forest.npz", "-o", str(forest)], fetched.parent)
    run_cmd(["python", "-m", "stages.predict", str(forest), str(fetched.parent / "my_tracks.csv"),
             "-o", str(fetched.parent / "forest.csv")], clone)
    assert len(pd.read_csv(fetched.parent / "forest.csv")) == len(tracks)
