import os
import subprocess
import sys

import pytest

from stages.common import AUDIO_FEATURES, FEATURE_SETS, FEATURES, UserError
from stages.params import (
    MODELS,
    load_feature_set,
    load_model_name,
    load_section,
    read_params_file,
    validate,
)
from tests.conftest import REPO


def test_repo_params_file_is_valid():
    data = read_params_file(REPO / "params.yaml")
    for section in ("fetch", "split", "merge_genres", "softmax", "mlp", "lstm", "forest",
                    "boosting", "blend"):
        validate(section, data[section])
    assert load_model_name(REPO / "params.yaml") in MODELS
    assert load_feature_set(REPO / "params.yaml") == "all"


def test_feature_sets_keep_the_dataset_order():
    assert FEATURE_SETS == {"all": FEATURES, "audio": AUDIO_FEATURES}
    assert AUDIO_FEATURES == ["duration_ms", "danceability", "energy", "key", "loudness", "mode",
                              "speechiness", "acousticness", "instrumentalness", "liveness",
                              "valence", "tempo", "time_signature"]


@pytest.mark.parametrize("text, expected", [("features: audio\n", "audio"),
                                            ("features: all\n", "all"),
                                            ("model: mlp\n", "all")])  # absent: all 15
def test_feature_set_param(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_feature_set(path) == expected


@pytest.mark.parametrize("value, shown", [("rf", "'rf'"), ("[audio]", "['audio']"),
                                          ("null", "None")])
def test_bad_feature_set_lists_valid_ones(tmp_path, value, shown):
    path = tmp_path / "params.yaml"
    path.write_text(f"features: {value}\n")
    with pytest.raises(UserError) as excinfo:
        load_feature_set(path)
    assert str(excinfo.value) == f"{path}: features = {shown}: must be one of all, audio"


def test_train_stops_on_a_bad_feature_set_with_one_line(tmp_path):
    params = (REPO / "params.yaml").read_text()
    assert "\nfeatures: all\n" in params
    (tmp_path / "params.yaml").write_text(params.replace("\nfeatures: all\n", "\nfeatures: api\n"))
    result = subprocess.run([sys.executable, "-m", "stages.train", "mlp"], cwd=tmp_path,
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr == "error: params.yaml: features = 'api': must be one of all, audio\n"


@pytest.mark.parametrize("section, raw, message", [
    ("lstm", {"unit": 3}, "lstm.unit: unknown param (typo?)"),
    ("split", {"test_size": 0}, "split.test_size = 0: Input should be greater than 0"),
    ("split", {"strategy": "rows"}, "split.strategy = 'rows': Input should be 'recording', 'group' or 'random'"),
    ("mlp", {"dropout": -0.1}, "mlp.dropout = -0.1: Input should be greater than or equal to 0"),
    ("mlp", {"hidden": []}, "mlp.hidden = []: List should have at least 1 item"),
    ("mlp", {"epochs": 0}, "mlp.epochs = 0: Input should be greater than or equal to 1"),
    ("lstm", {"variant": "gru"}, "lstm.variant = 'gru': Input should be"),
    ("fetch", {"url": "x", "sha256": "abc"}, "fetch.sha256 = 'abc': String should match pattern"),
    ("fetch", {"url": "x", "content_sha256": "abc"},
     "fetch.content_sha256 = 'abc': String should match pattern"),
    ("split", [1, 2], "split: must be a mapping"),
    ("merge_genres", {"strategy": "auto"},
     "merge_genres.strategy = 'auto': Input should be 'none', 'study' or 'learned'"),
    ("merge_genres", {"n_groups": 0}, "merge_genres.n_groups = 0: Input should be greater than"),
    ("merge_genres", {"enabled": True},
     "merge_genres: enabled was replaced by strategy: none | study | learned"),
    ("mlp", {"ensemble_size": 0}, "mlp.ensemble_size = 0: Input should be greater than or equal to 1"),
    ("mlp", {"ensemble_style": "bagged"}, "mlp.ensemble_style = 'bagged': Input should be"),
    ("mlp", {"numeric_embedding": "fourier"}, "mlp.numeric_embedding = 'fourier': Input should be"),
    ("mlp", {"numeric_embedding": "periodic", "embedding_dim": 0},
     "mlp: numeric_embedding periodic needs embedding_dim >= 1"),
    ("mlp", {"embedding_frequencies": 0}, "mlp.embedding_frequencies = 0: Input should be"),
    ("mlp", {"frequency_scale": 0}, "mlp.frequency_scale = 0: Input should be greater than 0"),
    ("lstm", {"numeric_embedding": "periodic", "variant": "stacked"},
     "lstm: numeric_embedding periodic embeds each step's value: it needs variant token, "
     "not stacked"),
    ("lstm", {"frequency_scale": 0}, "lstm.frequency_scale = 0: Input should be greater than 0"),
    ("mlp", {"label_smoothing": 1}, "mlp.label_smoothing = 1: Input should be less than 1"),
    ("lstm", {"label_smoothing": -0.1}, "lstm.label_smoothing = -0.1: Input should be"),
    ("blend", {"members": ["mlp", "cnn"]}, "blend.members.1 = 'cnn': Input should be 'softmax'"),
    ("blend", {"members": []}, "blend.members = []: List should have at least 1 item"),
    ("blend", {"members": ["mlp", "forest", "mlp"]}, "blend: members lists mlp more than once"),
    ("blend", {"min_weight": 1}, "blend.min_weight = 1: Input should be less than 1"),
    ("blend", {"weights": [1]}, "blend.weights: unknown param (typo?)"),
    ("boosting", {"feature_fraction": 0}, "boosting.feature_fraction = 0: Input should be greater than 0"),
    ("boosting", {"feature_fraction": 1.5},
     "boosting.feature_fraction = 1.5: Input should be less than or equal to 1"),
    ("forest", {"min_samples_leaf": 0},
     "forest.min_samples_leaf = 0: Input should be greater than or equal to 1"),
])
def test_bad_params_name_path_value_and_rule(section, raw, message):
    with pytest.raises(UserError) as excinfo:
        validate(section, raw)
    assert message in str(excinfo.value)


def test_bad_model_name_lists_valid_ones(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model: cnn\n")
    with pytest.raises(UserError) as excinfo:
        load_model_name(path)
    assert str(excinfo.value) == (f"{path}: model = 'cnn': must be one of softmax, mlp, lstm, "
                                  "forest, boosting, blend")


@pytest.mark.parametrize("name", ["softmax", "mlp", "lstm", "forest", "boosting", "blend"])
def test_every_family_and_the_blend_can_be_published(tmp_path, name):
    path = tmp_path / "params.yaml"
    path.write_text(f"model: {name}\n")
    assert load_model_name(path) == name


def test_invalid_yaml_and_missing_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split: [\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        read_params_file(path)
    path.write_text("model: mlp\n")
    with pytest.raises(UserError, match="section 'split' is missing"):
        load_section("split", path)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_thread_cap_is_a_clear_error(monkeypatch, value):
    from stages.tf_setup import quiet_tensorflow

    monkeypatch.setenv("SPOTIFY_GENRE_THREADS", value)
    with pytest.raises(UserError, match=f"SPOTIFY_GENRE_THREADS='{value}': must be a whole number >= 1"):
        quiet_tensorflow()
