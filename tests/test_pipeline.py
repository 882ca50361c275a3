"""End to end: the real dvc.yaml, run by DVC in a fresh git repo, on synthetic data."""

import csv
import io
import json
import re
import zipfile

import numpy as np
import pytest

from stages.common import AUDIO_FEATURES, FEATURES
from tests.conftest import clone_repo, run_cmd

pytestmark = pytest.mark.slow

NETWORKS = ("softmax", "mlp", "lstm")
TREES = ("forest", "boosting")
FAMILIES = NETWORKS + TREES
STAGES = ("fetch", "split", "taxonomy", "merge_genres", *(f"train_{f}" for f in FAMILIES),
          "blend", "evaluate", "publish")
MODELS = (*FAMILIES, "blend")


@pytest.fixture(scope="module")
def pipeline_repo(reproduced_repo, tmp_path_factory):
    repo, env, result = reproduced_repo
    return clone_repo(repo, tmp_path_factory.mktemp("pipeline") / "repo"), env, result


def _ran(result) -> list[str]:
    return re.findall(r"^Running stage '([^']+)'", result.stdout, re.M)


def test_repro_runs_every_stage_and_writes_every_output(pipeline_repo):
    repo, _, result = pipeline_repo
    assert sorted(_ran(result)) == sorted(STAGES)
    for path in ("data/raw/tracks.csv", "data/labeled/classes.json", "models/genre-classifier.keras",
                 "metrics/test.json", "reports/fetch.json", "reports/data.json",
                 "reports/evaluate.json", "reports/published.json", "plots/confusion.png",
                 "plots/per_genre.csv", "plots/top_confusions.csv",
                 *(f"models/{f}.keras" for f in NETWORKS),
                 *(f"models/{f}.npz" for f in TREES),
                 *(f"plots/train/{f}.csv" for f in NETWORKS),
                 *(f"reports/train/{f}.json" for f in FAMILIES),
                 "models/blend.zip", "reports/blend.json"):
        assert (repo / path).is_file(), path
    # the published model is the one named by `model` (the blend by default): its every
    # member, byte for byte (publish adds the taxonomy and what missing features cost)
    assert json.loads((repo / "reports/published.json").read_text())["model"] == "blend"
    _assert_published_is(repo, "models/blend.zip")
    # two epochs on the training split: the learning curve has two rows
    lines = (repo / "plots/train/softmax.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_accuracy,val_accuracy,train_loss,val_loss" and len(lines) == 3
    # under DVC each family logs exactly one line per epoch, no progress bars
    epoch_lines = re.findall(r"^epoch \d+/\d+ - .*loss.*val_accuracy", result.stdout, re.M)
    epochs_run = sum(json.loads((repo / f"reports/train/{f}.json").read_text())["epochs_run"]
                     for f in NETWORKS)
    assert len(epoch_lines) == epochs_run == 6
    assert "Epoch 1/" not in result.stdout and "\r" not in result.stdout
    assert "ms/step" not in result.stdout


def test_one_metrics_file_holds_every_family_as_numbers(pipeline_repo):
    repo, _, _ = pipeline_repo
    metrics = json.loads((repo / "metrics/test.json").read_text())
    assert set(metrics) == {*MODELS, "chance", "ceiling"}
    for family in MODELS:
        assert set(metrics[family]) == {"accuracy", "top5", "macro_f1", "ece"}
    numbers = [v for f in MODELS for v in metrics[f].values()] + [metrics["chance"]]
    assert all(isinstance(v, float) for v in numbers)
    assert metrics["chance"] == pytest.approx(0.25, abs=0.1)  # 4 balanced synthetic genres
    # the synthetic genres are separable: even a few trees are far above chance
    for family in TREES:
        assert metrics[family]["accuracy"] > metrics["chance"] + 0.3, (family, metrics)


def test_metrics_file_is_what_the_saved_models_score(pipeline_repo, monkeypatch):
    """Scoring the saved models again gives metrics/test.json and reports/evaluate.json
    exactly: what is committed is what the models do."""
    from stages import evaluate

    repo, _, _ = pipeline_repo
    monkeypatch.chdir(repo)  # evaluate reads data/labeled/ from the working directory
    report = evaluate.evaluate(MODELS, repo / "models")[0]
    assert evaluate.headline(report) == json.loads((repo / "metrics/test.json").read_text())
    assert report == json.loads((repo / "reports/evaluate.json").read_text())


def test_repro_again_is_a_no_op(pipeline_repo):
    repo, env, _ = pipeline_repo
    result = run_cmd(["dvc", "repro"], repo, env)
    assert _ran(result) == []


def _assert_published_is(repo, source: str) -> None:
    with zipfile.ZipFile(repo / "models/genre-classifier.keras") as published, \
            zipfile.ZipFile(repo / source) as family:
        added = set(published.namelist()) - set(family.namelist())
        assert added <= {"taxonomy.json", "missing.json"}, added
        for name in family.namelist():
            if name != "missing.json":  # publish adds the measured costs to it
                assert published.read(name) == family.read(name), name


def test_changing_model_reruns_only_publish(pipeline_repo):
    repo, env, _ = pipeline_repo
    before = (repo / "metrics/test.json").read_text()
    result = run_cmd(["dvc", "exp", "run", "-S", "model=softmax"], repo, env)
    assert _ran(result) == ["publish"]
    _assert_published_is(repo, "models/softmax.keras")
    assert json.loads((repo / "reports/published.json").read_text())["model"] == "softmax"
    assert (repo / "metrics/test.json").read_text() == before  # every family was scored already
    rows = list(csv.DictReader(io.StringIO(
        run_cmd(["dvc", "exp", "show", "--no-pager", "--csv"], repo, env).stdout)))
    # one experiment row carries every family's accuracy, top-5 and macro-F1
    for family in FAMILIES:
        for key in ("accuracy", "top5", "macro_f1"):
            assert rows[0][f"{family}.{key}"] not in ("", "-")


def _test_frame_csv(repo, path):
    import pandas as pd

    test = pd.read_parquet(repo / "data/labeled/test.parquet")
    test[["track_id", *FEATURES]].to_csv(path, index=False)
    return test


def test_publishing_a_tree_family_or_the_blend_reruns_only_publish(pipeline_repo, tmp_path):
    from stages.model_files import load_model, predict_proba

    repo, env, _ = pipeline_repo
    before = (repo / "metrics/test.json").read_text()
    evaluated = json.loads((repo / "reports/evaluate.json").read_text())
    test = _test_frame_csv(repo, tmp_path / "test.csv")
    x = test[FEATURES].to_numpy("float32")
    for name, source in (("forest", "models/forest.npz"), ("boosting", "models/boosting.npz"),
                         ("blend", "models/blend.zip")):
        result = run_cmd(["dvc", "exp", "run", "-S", f"model={name}"], repo, env)
        assert _ran(result) == ["publish"], name
        assert (repo / "metrics/test.json").read_text() == before
        report = json.loads((repo / "reports/published.json").read_text())
        assert report["model"] == name and report["format"] == "blend"
        assert report["accuracy"] == evaluated["families"][name]["accuracy"], name
        assert report["vs_best_single_family"]["reference"] == \
            evaluated["comparison"]["reference"]
        # the published file answers as its source does, through predict too
        published = load_model(repo / "models/genre-classifier.keras")[0]
        np.testing.assert_allclose(predict_proba(published, x),
                                   predict_proba(load_model(repo / source)[0], x), atol=1e-7)
        predicted = run_cmd(["python", "-m", "stages.predict", "genre-classifier",
                             str(tmp_path / "test.csv"), "-k", "1", "--use-popularity"],
                            repo, env).stdout
        table = list(csv.DictReader(io.StringIO(predicted)))
        right = np.mean([row["genre_1"] == label for row, label in zip(table, test["label"])])
        assert round(float(right), 5) == evaluated["families"][name]["accuracy"], name
    blend = json.loads((repo / "reports/blend.json").read_text())
    assert sum(blend["weights"].values()) == pytest.approx(1.0)
    assert set(blend["validation"]) == {*FAMILIES, "blend"}


def test_exp_show_only_changed_is_readable(reproduced_repo, tmp_path):
    source, env, _ = reproduced_repo
    repo = clone_repo(source, tmp_path / "repo")
    for setting in ("model=lstm", "mlp.hidden=[8]", "softmax.learning_rate=0.05"):
        run_cmd(["dvc", "exp", "run", "--temp", "-S", setting], repo, env)
    shown = run_cmd(["dvc", "exp", "show", "--no-pager", "--only-changed", "--csv"], repo, env)
    header = next(csv.reader(io.StringIO(shown.stdout)))
    # the CSV adds rev, typ and parent to what the table shows
    table_columns = [c for c in header if c not in ("rev", "typ", "parent")]
    assert len(table_columns) <= 25, table_columns
    assert "model" in table_columns and "mlp.hidden" in table_columns
    # no strings, timings or data statistics among the metrics
    assert not any(c.endswith(("train_seconds", "family", "strategy")) for c in header)


def test_plots_show_renders_every_chart(pipeline_repo):
    repo, env, _ = pipeline_repo
    run_cmd(["dvc", "plots", "show", "-o", "rendered"], repo, env)
    html = (repo / "rendered" / "index.html").read_text()
    for title in ("Learning curves, softmax", "Learning curves, mlp", "Learning curves, lstm",
                  "Per-genre F1 of the published model", "Most confused genre pairs",
                  "Test accuracy vs number of classes", "confusion.png"):
        assert title in html, title
    # short series names, not file paths
    assert "val_accuracy" in html and "plots/train/mlp/plots" not in html


def test_touching_tensorflow_setup_leaves_the_data_stages_up_to_date(reproduced_repo, tmp_path):
    source, env, _ = reproduced_repo
    repo = clone_repo(source, tmp_path / "repo")
    setup = repo / "stages" / "tf_setup.py"
    setup.write_text(setup.read_text() + "\n# touched\n")
    status = run_cmd(["dvc", "status"], repo, env).stdout
    changed = set(re.findall(r"^(\w+):", status, re.M))
    # the tree families don't load TensorFlow, nor does publish (it reads what evaluate
    # computed): they stay up to date too
    assert changed == {"train_softmax", "train_mlp", "train_lstm", "blend", "evaluate"}, status


def test_committed_outputs_hold_no_path_of_the_machine(pipeline_repo):
    repo, env, _ = pipeline_repo
    source = env["SPOTIFY_TRACKS_URL"]
    for path in ["dvc.lock", *(p for d in ("metrics", "plots", "reports")
                                for p in (repo / d).rglob("*") if p.suffix in (".json", ".csv"))]:
        text = (repo / path).read_text()
        assert str(repo) not in text and source not in text, path
    assert json.loads((repo / "reports/fetch.json").read_text())["source"] == "tracks.csv.gz"


def test_unknown_model_param_is_a_clear_error(pipeline_repo):
    repo, env, _ = pipeline_repo
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(re.sub(r"(?m)^model: \w+", "model: cnn", params))
    try:
        bad = run_cmd(["python", "-m", "stages.publish"], repo, env, check=False)
    finally:
        (repo / "params.yaml").write_text(params)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: params.yaml: model = 'cnn': must be one of softmax, "
                                  "mlp, lstm, forest, boosting, blend")


def _saved_features(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("features.json"))


def test_audio_features_retrain_every_family_and_nothing_before(reproduced_repo, tmp_path):
    source, env, _ = reproduced_repo
    repo = clone_repo(source, tmp_path / "repo")
    assert _saved_features(repo / "models/mlp.keras") == FEATURES  # the default: all 15
    result = run_cmd(["dvc", "exp", "run", "-S", "features=audio"], repo, env)
    assert sorted(_ran(result)) == sorted(
        [*(f"train_{f}" for f in FAMILIES), "blend", "evaluate", "publish"]), result.stdout
    for name in NETWORKS:
        assert _saved_features(repo / f"models/{name}.keras") == AUDIO_FEATURES, name
    from stages import trees

    for name in TREES:
        assert trees.load(repo / f"models/{name}.npz")[2] == AUDIO_FEATURES, name
    report = json.loads((repo / "reports/evaluate.json").read_text())
    assert {f: report["families"][f]["features"] for f in FAMILIES} == dict.fromkeys(FAMILIES, 13)
    assert json.loads((repo / "reports/published.json").read_text())["features"] == AUDIO_FEATURES


def test_learned_taxonomy_drives_the_classes_through_training_and_prediction(reproduced_repo,
                                                                             tmp_path):
    source, env, _ = reproduced_repo
    repo = clone_repo(source, tmp_path / "repo")
    # 4 synthetic genres; the accuracy-vs-classes curve covers every level down to 1
    curve = list(csv.DictReader(open(repo / "plots/taxonomy/learned.csv")))
    assert [int(r["classes"]) for r in curve] == [4, 3, 2, 1]
    # its first point is the published model (the blend) unmerged: what evaluate scored for it
    metrics = json.loads((repo / "metrics/test.json").read_text())
    published = json.loads((repo / "reports/published.json").read_text())["model"]
    assert float(curve[0]["accuracy"]) == metrics[published]["accuracy"]
    assert float(curve[0]["macro_f1"]) == metrics[published]["macro_f1"]
    assert float(curve[0]["chance"]) == metrics["chance"]
    genres = json.loads((repo / "data/labeled/classes.json").read_text())
    from stages.model_files import load_model

    # the strategy alone touches merge_genres only: its outputs decide what re-runs next
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("  strategy: none", "  strategy: learned"))
    status = run_cmd(["dvc", "status"], repo, env).stdout
    (repo / "params.yaml").write_text(params)
    assert set(re.findall(r"^(\w+):", status, re.M)) == {"merge_genres"}, status

    # merge_genres.train_on: genres (the default): no family retrains, the models'
    # answers are summed per merged class
    result = run_cmd(["dvc", "exp", "run", "-n", "learned-3", "-S", "merge_genres.strategy=learned",
                      "-S", "merge_genres.n_groups=3", "-S", "merge_genres.max_group_size=2"],
                     repo, env)
    assert sorted(_ran(result)) == ["evaluate", "merge_genres", "publish", "taxonomy"]
    assert json.loads((repo / "data/labeled/classes.json").read_text()) == genres
    classes = json.loads((repo / "data/labeled/fold.json").read_text())["fold"]["to"]
    classes = sorted(set(classes))
    learned = (repo / "taxonomies/learned.yaml").read_text()
    merged = [c for c in classes if "/" in c]  # one pair of genres became one class
    assert len(classes) == 3 and len(merged) == 1 and f'"{merged[0]}":' in learned, learned
    assert load_model(repo / "models/genre-classifier.keras")[1] == classes
    folded = json.loads((repo / "metrics/test.json").read_text())
    report = json.loads((repo / "reports/evaluate.json").read_text())
    assert report["test_set"]["classes"] == 3 and report["fold"] == {"genres": 4, "classes": 3}
    # every model is scored at the 3 classes: what the 4-genre models score folded to them
    assert {m: folded[m]["accuracy"] for m in MODELS} == report["folded"]["learned"]["accuracy"]
    predicted = run_cmd(["python", "-m", "stages.predict", "models/genre-classifier.keras",
                         "data/raw/tracks.csv", "-k", "1"], repo, env).stdout
    assert {row["genre_1"] for row in csv.DictReader(io.StringIO(predicted))} <= set(classes)
    # the benchmark's table reads the experiment's own reports: one row per family
    from bench import table

    rows = table.rows_of("learned-3", table.experiments(repo)["learned-3"], repo)
    assert [r["family"] for r in rows] == list(MODELS)
    assert {r["classes"] for r in rows} == {"3 (learned ≤2, summed)"}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert all(r["train s"] >= 0 for r in rows if r["family"] != "blend")  # no training stage
    assert "| learned-3 | recording | 3 (learned ≤2, summed) | all | mlp |" in table.markdown(rows)
    # train_on: classes retrains every family on the merged classes (the study's way)
    result = run_cmd(["dvc", "exp", "run", "-n", "learned-3-retrained",
                      "-S", "merge_genres.strategy=learned", "-S", "merge_genres.n_groups=3",
                      "-S", "merge_genres.max_group_size=2", "-S", "merge_genres.train_on=classes"],
                     repo, env)
    ran = set(_ran(result))
    assert {"merge_genres", *(f"train_{f}" for f in FAMILIES), "blend", "evaluate",
            "publish"} == ran, ran
    assert json.loads((repo / "data/labeled/classes.json").read_text()) == classes
    assert json.loads((repo / "data/labeled/fold.json").read_text()) == {"fold": None}
    assert load_model(repo / "models/genre-classifier.keras")[1] == classes
    assert load_model(repo / "models/mlp.keras")[1] == classes
    rows = table.rows_of("learned-3-retrained",
                         table.experiments(repo)["learned-3-retrained"], repo)
    assert {r["classes"] for r in rows} == {"3 (learned ≤2)"}
    bad = run_cmd(["dvc", "exp", "run", "-S", "merge_genres.strategy=learned",
                   "-S", "merge_genres.n_groups=9"], repo, env, check=False)
    assert bad.returncode != 0
    assert "error: params.yaml: merge_genres.n_groups = 9: more than the 4 genres" in \
        bad.stdout + bad.stderr
