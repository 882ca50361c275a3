"""stages.adapt: a model of the user's own labels on top of a (tiny, synthetic) base network."""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from stages.common import AUDIO_FEATURES, FEATURES
from stages.params import validate
from stages.tf_setup import quiet_tensorflow
from tests.conftest import make_tracks

quiet_tensorflow()

GENRES = ("acoustic", "blues", "chill", "dance")
# the user's labels: a known function of the base model's genres
GROUP = {"acoustic": "calm", "chill": "calm", "blues": "loud", "dance": "party"}


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """A tiny masked MLP (takes missing features), saved as stage train saves one."""
    from stages import model_files, train
    from stages.common import feature_ranges
    from stages.models import MIN_FEATURES
    from stages.split import clean

    frame, _ = clean(make_tracks(GENRES, rows_per_genre=60, seed=1))
    frame["label"] = frame["track_genre"]
    classes = sorted(frame["label"].unique())
    params = validate("mlp", {"epochs": 8, "batch_size": 32, "hidden": [16], "embedding_dim": 4,
                              "ensemble_size": 2, "feature_dropout": 0.1,
                              "popularity_dropout": 0.5, "learning_rate": 0.01})
    model, _, _ = train.train("mlp", params, frame, frame, classes)
    path = tmp_path_factory.mktemp("base") / "base.keras"
    model_files.save_model(model, path, classes, FEATURES,
                           feature_ranges(frame[FEATURES].to_numpy("float64"), FEATURES),
                           {model_files.MISSING_MEMBER: {"min_features": MIN_FEATURES},
                            model_files.TAXONOMY_MEMBER: {"classes": classes, "merges": []}})
    return path


def base_genres(base_file, rows: pd.DataFrame) -> np.ndarray:
    """The base model's most probable genre of each row (over the 13 audio features)."""
    from stages import model_files

    model, classes, _ = model_files.load_model(base_file)
    x = rows[FEATURES].to_numpy("float32").copy()
    x[:, [FEATURES.index(f) for f in ("popularity", "explicit")]] = np.nan
    return np.asarray(classes)[model_files.predict_proba(model, x).argmax(axis=1)]


def user_tracks(base_file, per_label: int, seed: int) -> pd.DataFrame:
    """Tracks labelled by GROUP of the base model's genre, ``per_label`` of each label."""
    rows = make_tracks(GENRES, rows_per_genre=80, seed=seed).drop(columns=["Unnamed: 0"])
    rows = rows.dropna().drop_duplicates("track_id").reset_index(drop=True)
    rows["my_label"] = [GROUP[g] for g in base_genres(base_file, rows)]
    rows = rows.drop(columns=["track_genre"])
    picked = [group.head(per_label) for _, group in rows.groupby("my_label")]
    return pd.concat(picked).sample(frac=1, random_state=seed).reset_index(drop=True)


def run_main(module: str, capsys, *args):
    """(exit code, stdout, stderr) of ``python -m stages.MODULE ARGS``, in this process."""
    import importlib

    try:
        importlib.import_module(f"stages.{module}").main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_adapt(capsys, *args):
    return run_main("adapt", capsys, *args)


def run_predict(capsys, *args):
    return run_main("predict", capsys, *args)


def test_labels_made_from_the_base_genres_are_learned_from_10_tracks_each(base_file, tmp_path,
                                                                          capsys):
    train = user_tracks(base_file, per_label=10, seed=2)
    assert train["my_label"].value_counts().to_dict() == {"calm": 10, "loud": 10, "party": 10}
    train.to_csv(tmp_path / "mine.csv", index=False)
    out_file = tmp_path / "mine.zip"
    code, out, err = run_adapt(capsys, tmp_path / "mine.csv", "--label", "my_label", "-o",
                               out_file, "--base", base_file)
    assert code == 0, err
    assert "| tracks per label |" in out and "forest from scratch" in out
    report = json.loads((tmp_path / "mine.report.json").read_text())
    assert report["grouping"] == "grouped by track_id" and report["rows"] == 30
    assert report["features"] == AUDIO_FEATURES  # popularity and explicit left out
    assert (tmp_path / "mine.curve.png").read_bytes()[:4] == b"\x89PNG"
    # fresh tracks, labelled the same way: the adapted model knows the labels
    fresh = user_tracks(base_file, per_label=40, seed=3)
    fresh.drop(columns=["my_label"]).to_csv(tmp_path / "fresh.csv", index=False)
    code, out, err = run_predict(capsys, out_file, tmp_path / "fresh.csv", "-k", 2)
    assert code == 0, err
    answers = pd.read_csv(pd.io.common.StringIO(out))
    assert set(answers["genre_1"]) <= set(GROUP.values())
    truth = fresh.set_index("track_id").loc[answers["track_id"], "my_label"].to_numpy()
    assert (answers["genre_1"].to_numpy() == truth).mean() >= 0.9


def test_linear_head_alone_learns_the_base_genres_function(base_file, tmp_path):
    """The linear head on the base's log-probabilities: 10 tracks per label suffice."""
    from stages import adapt

    train = user_tracks(base_file, per_label=10, seed=4)
    fresh = user_tracks(base_file, per_label=40, seed=5)
    base = adapt.Base(base_file.read_bytes())
    labels = sorted(set(GROUP.values()))
    y = np.searchsorted(labels, train["my_label"])
    x = train[AUDIO_FEATURES].to_numpy("float64")
    parts = adapt.fit_head("linear", x, base.log_proba(x, AUDIO_FEATURES), y, 3,
                           AUDIO_FEATURES, seed=0)
    xf = fresh[AUDIO_FEATURES].to_numpy("float64")
    guess = adapt.head_proba(parts, xf, base.log_proba(xf, AUDIO_FEATURES)).argmax(axis=1)
    assert (np.asarray(labels)[guess] == fresh["my_label"].to_numpy()).mean() >= 0.9


def test_no_track_id_is_in_two_folds():
    from stages.adapt import folds_of

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, size=200)  # tracks in several rows (several playlists)
    labels = rng.integers(0, 3, size=200)
    seen = {}
    folds = folds_of(labels, ids, 5, seed=0)
    assert len(folds) == 5
    for fold, (train, test) in enumerate(folds):
        assert not set(ids[train]) & set(ids[test])
        for track in set(ids[test]):
            assert seen.setdefault(track, fold) == fold
    assert sorted(np.concatenate([test for _, test in folds])) == list(range(200))


def pickled_npz() -> bytes:
    import io

    handle = io.BytesIO()
    np.savez(handle, format=np.array("spotify-genre-head"), version=np.array(1),
             log_shift=np.array([object()], dtype=object))
    return handle.getvalue()


def test_adapted_file_predicts_the_users_labels_without_levels_or_pickle(base_file, tmp_path,
                                                                          capsys):
    from stages import adapt, model_files

    train = user_tracks(base_file, per_label=12, seed=6)
    # the audio-features API's JSON: 13 features, `id`, and the label
    entries = [{"id": r.track_id, "genre": r.my_label, **{f: getattr(r, f) for f in AUDIO_FEATURES}}
               for r in train.itertuples()]
    (tmp_path / "api.json").write_text(json.dumps({"audio_features": entries}))
    out_file = tmp_path / "api-genres.zip"
    code, _, err = run_adapt(capsys, tmp_path / "api.json", "--label", "genre", "-o", out_file,
                             "--base", base_file, "--head", "ensemble", "--folds", 3)
    assert code == 0, err
    model, classes, features = adapt.load_model(out_file)
    assert classes == sorted(set(GROUP.values())) and features == AUDIO_FEATURES
    with zipfile.ZipFile(out_file) as archive:
        names = archive.namelist()
        assert model_files.TAXONOMY_MEMBER not in names  # the base's hierarchy stays inside it
        spec = json.loads(archive.read(adapt.ADAPTED_MEMBER))
    assert [h["kind"] for h in spec["heads"]] == ["linear", "forest", "forest"]
    assert all(n.endswith((".json", ".keras", ".npz")) for n in names)
    rows = train.drop(columns=["my_label"])  # all 15 columns: predict reads the 13
    rows.to_csv(tmp_path / "tracks.csv", index=False)
    code, out, err = run_predict(capsys, out_file, tmp_path / "tracks.csv")
    assert code == 0, err
    header = out.splitlines()[0].split(",")
    assert header == ["track_id", "line", "genre_1", "prob_1", "genre_2", "prob_2", "genre_3",
                      "prob_3"]
    assert "group" not in header
    code, _, err = run_predict(capsys, out_file, tmp_path / "tracks.csv", "--level", 2)
    assert code == 2 and err.count("\n") == 1 and "adapted to your own labels" in err
    # a damaged description or a head holding a pickle: one line, no code run
    for member, data in [(adapt.ADAPTED_MEMBER, b'{"format": "spotify-genre-adapted", '
                                                b'"version": 1, "heads": "x"}'),
                         (spec["heads"][0]["file"], pickled_npz())]:
        broken = tmp_path / "broken.zip"
        with zipfile.ZipFile(out_file) as old, zipfile.ZipFile(broken, "w") as new:
            for item in old.infolist():
                new.writestr(item, data if item.filename == member else old.read(item.filename))
        code, _, err = run_predict(capsys, broken, tmp_path / "tracks.csv")
        assert code == 2 and "not a" in err and err.count("error:") == 1, err
    # the same input gives the same file
    again = tmp_path / "again.zip"
    code, _, err = run_adapt(capsys, tmp_path / "api.json", "--label", "genre", "-o", again,
                             "--base", base_file, "--head", "ensemble", "--folds", 3)
    assert code == 0, err
    assert again.read_bytes() == out_file.read_bytes()


def test_decimal_commas_and_a_renamed_label_column(base_file, tmp_path, capsys):
    train = user_tracks(base_file, per_label=8, seed=7).drop(columns=["popularity", "explicit"])
    train.loc[:1, "my_label"] = ""  # two rows nobody labelled
    text = train.rename(columns={"my_label": "Playlist"}).to_csv(index=False, sep=";",
                                                                 decimal=",")
    (tmp_path / "semi.csv").write_text(text)
    code, out, err = run_adapt(capsys, tmp_path / "semi.csv", "--label", "genre", "--column",
                               "Playlist=genre", "--decimal", ",", "-o", tmp_path / "m.zip",
                               "--base", base_file, "--head", "linear", "--folds", 2)
    assert code == 0, err
    assert "adapting without popularity, explicit" in err
    assert "2 rows without a label skipped" in err


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns=["my_label"]), "no label column 'my_label'"),
    (lambda f: pd.concat([f, f.head(1).assign(my_label="solo", track_id="x1")]),
     "label 'solo' (1 track): every label needs at least 2 tracks"),
    (lambda f: pd.concat([f.head(3).assign(my_label="solo", track_id=["a", "a", "a"]),
                          f.iloc[3:]]), "label 'solo' (1 track)"),
    (lambda f: f.assign(my_label="calm"), "every labelled row has the label 'calm'"),
    (lambda f: f.assign(my_label=""), "no row has a label in 'my_label'"),
])
def test_bad_input_is_one_line_and_writes_nothing(base_file, tmp_path, capsys, change, message):
    rows = change(user_tracks(base_file, per_label=5, seed=8))
    rows.to_csv(tmp_path / "bad.csv", index=False)
    code, out, err = run_adapt(capsys, tmp_path / "bad.csv", "--label", "my_label", "-o",
                               tmp_path / "out.zip", "--base", base_file)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]
