"""End to end: the real dvc.yaml, run by DVC in a fresh git repo, on synthetic data."""

import json
import re

import pytest

from tests.conftest import clone_repo, run_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_repo(reproduced_repo, tmp_path_factory):
    repo, env, result = reproduced_repo
    return clone_repo(repo, tmp_path_factory.mktemp("pipeline") / "repo"), env, result


def test_repro_runs_every_stage_and_writes_every_output(pipeline_repo):
    repo, _, result = pipeline_repo
    for stage in ("fetch", "split", "merge_genres", "train_softmax", "train_mlp", "train_lstm",
                  "evaluate"):
        assert f"Running stage '{stage}'" in result.stdout
    for path in ("data/raw/tracks.csv", "data/labeled/classes.json", "models/mlp.keras",
                 "models/lstm.keras", "models/softmax.keras", "metrics/evaluate.json",
                 "metrics/train/lstm.json", "plots/confusion.csv", "plots/confusion.png",
                 "plots/per_genre.csv", "plots/per_genre_f1.png", "plots/top_confusions.csv",
                 "plots/train/mlp/plots/metrics/eval/loss.tsv", "plots/train/lstm/curves.png"):
        assert (repo / path).is_file(), path
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert metrics["model"] == "mlp" and metrics["classes"] == 4
    assert 0 <= metrics["accuracy"] <= metrics["ceiling"] <= 1
    # two epochs on the training split: the learning curve has two points
    lines = (repo / "plots/train/softmax/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert len(lines) == 3
    # under DVC each family logs exactly one line per epoch, no progress bars
    epoch_lines = re.findall(r"^epoch \d+/\d+ - .*loss.*val_accuracy", result.stdout, re.M)
    epochs_run = sum(json.loads((repo / f"metrics/train/{family}.json").read_text())["epochs_run"]
                     for family in ("softmax", "mlp", "lstm"))
    assert len(epoch_lines) == epochs_run == 6
    assert "Epoch 1/" not in result.stdout and "\r" not in result.stdout
    assert "ms/step" not in result.stdout


def test_repro_again_is_a_no_op(pipeline_repo):
    repo, env, _ = pipeline_repo
    result = run_cmd(["dvc", "repro"], repo, env)
    assert "Running stage" not in result.stdout


def test_changing_model_reruns_only_evaluate(pipeline_repo):
    repo, env, _ = pipeline_repo
    result = run_cmd(["dvc", "exp", "run", "-S", "model=softmax"], repo, env)
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'evaluate':"]
    assert json.loads((repo / "metrics/evaluate.json").read_text())["model"] == "softmax"
    diff = run_cmd(["dvc", "metrics", "diff"], repo, env)
    assert "metrics/evaluate.json" in diff.stdout and "accuracy" in diff.stdout
    shown = run_cmd(["dvc", "exp", "show", "--no-pager", "--csv"], repo, env)
    assert "softmax" in shown.stdout


def test_plots_show_renders_the_confusion_matrix(pipeline_repo):
    repo, env, _ = pipeline_repo
    run_cmd(["dvc", "plots", "show", "-o", "rendered"], repo, env)
    html = (repo / "rendered" / "index.html").read_text()
    assert "Confusion matrix" in html and "confusion.png" in html
    assert "Learning curves, loss" in html


def test_unknown_model_param_is_a_clear_error(pipeline_repo):
    repo, env, _ = pipeline_repo
    result = run_cmd(["python", "-m", "stages.evaluate"], repo,
                     env, check=False)
    assert result.returncode == 0  # sanity: the committed params work
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("model: softmax", "model: cnn")
                                      .replace("model: mlp", "model: cnn"))
    try:
        bad = run_cmd(["python", "-m", "stages.evaluate"], repo, env, check=False)
    finally:
        (repo / "params.yaml").write_text(params)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: params.yaml: model = 'cnn': must be one of softmax, mlp, lstm"
