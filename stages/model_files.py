"""Saving and loading the project's model files (used by train, evaluate, publish, predict).

A network is a plain ``.keras`` file with two extra zip members, the class list and
the feature list, so a model trained on merged genres predicts merged genres and a
model trained on the 13 audio features asks only for those, wherever it travels. A
tree family is an ``.npz`` of plain arrays with the same two lists (stages/trees.py).
A blend (stage blend) is one zip holding each member's own model file under
``members/``, the class and feature lists, and ``blend.json``: every member's weight and
the temperature of their weighted mean. A published tree family travels as a blend of
one member. A blend may also fold its answers (``fold`` in blend.json, format version 2):
its members answer in genres, it in the merged classes, each the sum of its genres'
probabilities (param merge_genres.train_on = genres). No format runs code from the file
when it is loaded.
"""

from __future__ import annotations

import json
import math
import weakref
import zipfile
from pathlib import Path

from stages.common import FEATURES, MODELS_DIR, Fold, UserError, atomic_path, fixed_date

# extra members in the .keras zip; keras' loader ignores them
CLASSES_MEMBER = "classes.json"
FEATURES_MEMBER = "features.json"
# a network that takes NaN for a missing feature: {"min_features": N, and once published,
# "test_accuracy": {"": all present, "popularity,explicit": those two missing, ...}}
MISSING_MEMBER = "missing.json"
# the learned genre hierarchy (stage taxonomy's merges), for answers at any level
TAXONOMY_MEMBER = "taxonomy.json"
# {"temperature": T}: the network's probabilities become softmax(log p / T) (calibration)
CALIBRATION_MEMBER = "calibration.json"
RANGES_MEMBER = "ranges.json"  # {feature: [min, max]} over the training rows (optional)
TREE_SUFFIX = ".npz"
# a blend: {"format", "version", "temperature", "members": [{"name", "file", "weight"}],
# and in version 2 "fold": {"genres": the members' classes, "to": the class of each}}
BLEND_MEMBER = "blend.json"
BLEND_FORMAT = "spotify-genre-blend"
BLEND_VERSION = 1
FOLDED_BLEND_VERSION = 2  # only a blend with a fold: older code refuses it, never misreads it
BLEND_SUFFIX = ".zip"
MEMBERS_DIR = "members"


def family_file(family: str) -> Path:
    """Where the pipeline keeps a model: models/<family>.keras, .npz (trees) or
    models/blend.zip (the blend)."""
    from stages.params import BLEND, TREES  # noqa: PLC0415

    if family == BLEND:
        return MODELS_DIR / f"{BLEND}{BLEND_SUFFIX}"
    return MODELS_DIR / f"{family}{TREE_SUFFIX if family in TREES else '.keras'}"


class Calibrated:
    """A Keras model whose probabilities are temperature-scaled (stages.calibration).

    The scaling runs in numpy on the network's output, not as layers inside it: row by
    row the same whatever the batch (TensorFlow's vectorised log and exp are not), so a
    file predicted in chunks gives the same answers as predicted whole. Anything else is
    the network's own (``layers``, ``input_shape``...).
    """

    def __init__(self, model, temperature: float):
        self.model, self.temperature = model, float(temperature)

    def predict_proba(self, x):
        from stages.calibration import apply_temperature  # noqa: PLC0415

        return apply_temperature(_network_proba(self.model, x), self.temperature)

    def __getattr__(self, name):
        if name == "model":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def save_model(model, path: Path, classes: list[str], features: list[str],
               ranges: dict[str, list[float]] | None = None, extra: dict | None = None) -> None:
    """Save atomically, with the class and feature lists, when given each feature's
    training range (for predict's plausibility check), and ``extra`` {member: JSON value}
    stored inside the .keras file (and a Calibrated model's temperature)."""
    if isinstance(model, Calibrated):
        extra = {**(extra or {}), CALIBRATION_MEMBER: {"temperature": model.temperature}}
        model = model.model
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(CLASSES_MEMBER, json.dumps(classes))
            archive.writestr(FEATURES_MEMBER, json.dumps(list(features)))
            if ranges is not None:
                archive.writestr(RANGES_MEMBER, json.dumps(
                    {f: [float(low), float(high)] for f, (low, high) in ranges.items()}))
            for name, value in (extra or {}).items():
                archive.writestr(name, json.dumps(value))


def copy_with_members(source: Path, dest: Path, members: dict) -> None:
    """Copy a .keras file (or a blend zip) to ``dest`` (atomically), adding or replacing
    JSON members."""
    with atomic_path(dest, suffix=Path(source).suffix) as tmp:
        with zipfile.ZipFile(source) as old, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as new:
            for item in old.infolist():
                if item.filename not in members:
                    new.writestr(item, old.read(item.filename))
            for name, value in members.items():
                new.writestr(fixed_date(name), json.dumps(value))


def folded_spec(spec: dict, fold: Fold | None) -> dict:
    """blend.json with ``fold`` (its members' classes folded into merged ones), or as it is."""
    if fold is None:
        return spec
    return {**spec, "version": FOLDED_BLEND_VERSION, "fold": fold.to_json()}


def save_blend(path: Path, members: list[tuple[str, Path, float]], classes: list[str],
               features: list[str], temperature: float, extra: dict | None = None,
               fallback: str | None = None, fold: Fold | None = None) -> None:
    """Write a blend atomically: ``members`` are (name, model file, weight), the weights
    summing to 1; their files are stored as they are, under members/. ``fallback`` names
    the member (a network that takes missing features) that alone answers a row with a
    feature missing (NaN), which the other members cannot. ``classes`` are the members';
    with ``fold`` the blend answers in its classes instead."""
    spec = {"format": BLEND_FORMAT, "version": BLEND_VERSION, "temperature": float(temperature),
            "members": [{"name": name, "file": f"{MEMBERS_DIR}/{name}{Path(source).suffix}",
                         "weight": float(weight)} for name, source, weight in members]}
    if fallback is not None:
        spec["fallback"] = fallback
    contents = {BLEND_MEMBER: json.dumps(folded_spec(spec, fold), indent=1),
                CLASSES_MEMBER: json.dumps(list(fold.classes if fold else classes)),
                FEATURES_MEMBER: json.dumps(list(features)),
                **{entry["file"]: Path(source).read_bytes()
                   for (_, source, _), entry in zip(members, spec["members"])},
                **{name: json.dumps(value) for name, value in (extra or {}).items()}}
    with atomic_path(path, suffix=BLEND_SUFFIX) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name, data in contents.items():
                # the member files are compressed already: stored as they are
                info = fixed_date(name, zipfile.ZIP_STORED)
                archive.writestr(info, data)


def fold_blend(source: Path, dest: Path, fold: Fold, extra: dict | None = None) -> None:
    """Copy a blend zip to ``dest`` folding its answers with ``fold``, adding ``extra``
    JSON members."""
    try:
        with zipfile.ZipFile(source) as archive:
            spec = _blend_spec(archive)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise _not_ours(source, exc) from None
    if "fold" in spec:
        raise UserError(f"{source}: the blend folds its answers already")
    copy_with_members(source, dest, {BLEND_MEMBER: folded_spec(spec, fold),
                                     CLASSES_MEMBER: fold.classes, **(extra or {})})


def has_member(path: Path, member: str) -> bool:
    """True for a zip that holds ``member`` (whatever the file is named): how a blend
    (blend.json) and an adapted model (adapted.json) are told from a .keras zip."""
    path = Path(path)
    if path.suffix == TREE_SUFFIX or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return member in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def is_blend(path: Path) -> bool:
    """True for a zip with a blend.json member (whatever the file is named)."""
    return has_member(path, BLEND_MEMBER)


class Blend:
    """The weighted mean of its members' probabilities, then softmax(log p / temperature).

    ``members`` are (name, model, columns, weight): each member reads its own feature
    columns of the blend's input. A row with a missing feature (NaN) is answered by the
    ``fallback`` member alone (a network that takes missing features), when there is one.
    With a ``fold`` the answer is then summed per merged class."""

    def __init__(self, members: list, n_classes: int, temperature: float = 1.0,
                 fallback: str | None = None, unloaded: dict | None = None,
                 fold: Fold | None = None):
        self.members = members
        self.unloaded = unloaded or {}  # {name: (file name, bytes)} of members with model None
        self.n_classes = n_classes  # the members'
        self.temperature = temperature
        self.fallback = fallback
        self.fold = fold

    @property
    def weights(self) -> dict[str, float]:
        return {name: weight for name, _, _, weight in self.members}

    def predict_proba(self, x, known: dict | None = None):
        """``known``: {member name: its probabilities for these rows}, computed before from
        the same model file (see same_member_files), used instead of predicting again."""
        proba = self._members_proba(x, known or {})
        return proba if self.fold is None else self.fold.apply(proba)

    def _members_proba(self, x, known: dict):
        import numpy as np  # noqa: PLC0415

        from stages.calibration import apply_temperature  # noqa: PLC0415

        total = np.zeros((len(x), self.n_classes), dtype=np.float64)
        if len(x) == 0:
            return total
        gaps = np.isnan(x).any(axis=1)
        if gaps.any() and self.fallback is not None:
            _, model, columns, _ = next(m for m in self.members if m[0] == self.fallback)
            total[gaps] = self._predict(self.fallback, model, x[gaps][:, columns])
            if not gaps.all():
                total[~gaps] = self._members_proba(x[~gaps], {})
            return total
        for name, model, columns, weight in self.members:
            if weight > 0:
                proba = known[name] if name in known else self._predict(name, model,
                                                                        x[:, columns])
                total += weight * np.asarray(proba, dtype=np.float64)
        total /= total.sum(axis=1, keepdims=True)  # float32 members: exactly 1 again
        return apply_temperature(total, self.temperature)

    def _predict(self, name: str, model, x):
        if model is None:  # left unloaded by load_model(..., unloaded=...): load it now
            model = self._load_member(name)
        return predict_proba(model, x)

    def _load_member(self, name: str):
        import tempfile  # noqa: PLC0415

        file_name, content = self.unloaded.pop(name)
        with tempfile.TemporaryDirectory() as tmp:
            member_path = Path(tmp) / file_name
            member_path.write_bytes(content)
            model = load_model(member_path)[0]
        self.members = [(n, model if n == name else m, c, w) for n, m, c, w in self.members]
        return model


def _blend_spec(archive: zipfile.ZipFile) -> dict:
    """blend.json, checked: a wrong entry is a ValueError naming it."""
    import math  # noqa: PLC0415

    spec = json.loads(archive.read(BLEND_MEMBER))
    if not isinstance(spec, dict) or spec.get("format") != BLEND_FORMAT:
        raise ValueError(f"{BLEND_MEMBER} is not a blend description")
    version = FOLDED_BLEND_VERSION if "fold" in spec else BLEND_VERSION
    if spec.get("version") != version:
        raise ValueError(f"blend format version {spec.get('version')!r}, this code reads "
                         f"{version}{' with a fold' if 'fold' in spec else ''}")
    if "fold" in spec:
        Fold.from_json(spec["fold"], f"{BLEND_MEMBER}: fold")
    temperature = spec.get("temperature")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"{BLEND_MEMBER}: temperature {temperature!r} is not a positive number")
    members = spec.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError(f"{BLEND_MEMBER}: no members")
    for entry in members:
        if (not isinstance(entry, dict) or not isinstance(entry.get("name"), str)
                or not isinstance(entry.get("file"), str)
                or not entry["file"].startswith(f"{MEMBERS_DIR}/")
                or not isinstance(entry.get("weight"), (int, float))
                or not math.isfinite(entry["weight"]) or entry["weight"] < 0):
            raise ValueError(f"{BLEND_MEMBER}: bad member entry {json.dumps(entry)[:80]}")
    if abs(sum(entry["weight"] for entry in members) - 1) > 1e-6:
        raise ValueError(f"{BLEND_MEMBER}: member weights do not sum to 1")
    if "fallback" in spec and spec["fallback"] not in [entry["name"] for entry in members]:
        raise ValueError(f"{BLEND_MEMBER}: fallback {spec['fallback']!r} is not a member")
    return spec


def same_member_files(path: Path, files: dict) -> list[str]:
    """The blend's members whose stored file is byte for byte ``files[name]`` (a path):
    what that file predicts, the member predicts."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [entry["name"] for entry in _blend_spec(archive)["members"]
                    if entry["name"] in files and Path(files[entry["name"]]).is_file()
                    and archive.read(entry["file"]) == Path(files[entry["name"]]).read_bytes()]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None


def _load_blend(path: Path, unloaded=()):
    """(Blend, classes, features): every member loaded from its own file in the zip, except
    those named in ``unloaded``: their class and feature lists are checked like the rest,
    and the model is loaded only if it is asked to predict (the caller has their
    probabilities for the rows it cares about: Blend.predict_proba's ``known``)."""
    import tempfile  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    try:
        with zipfile.ZipFile(path) as archive:
            spec = _blend_spec(archive)
            classes = json.loads(archive.read(CLASSES_MEMBER))
            fold = Fold.from_json(spec["fold"], BLEND_MEMBER) if "fold" in spec else None
            if fold is not None and fold.classes != classes:
                raise ValueError(f"{BLEND_MEMBER}: its fold does not give {CLASSES_MEMBER}")
            features = _features_in(archive)
            stored = set(archive.namelist())
            contents = {}
            for entry in spec["members"]:
                if entry["file"] not in stored:
                    raise UserError(f"{path}: blend member {entry['file']} is missing from the "
                                    "file (rebuild it: dvc repro blend)")
                contents[entry["file"]] = archive.read(entry["file"])
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None
    members, left = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for entry in spec["members"]:
            where = f"{path}: blend member {entry['file']}"
            member_path = Path(tmp) / Path(entry["file"]).name
            member_path.write_bytes(contents[entry["file"]])
            if is_blend(member_path):
                raise UserError(f"{where}: a blend inside a blend")
            try:
                if entry["name"] in unloaded:
                    model = None
                    member_classes, member_features = read_classes_and_features(member_path)
                    left[entry["name"]] = (member_path.name, contents[entry["file"]])
                else:
                    model, member_classes, member_features = load_model(member_path)
            except UserError as exc:  # name the blend and its member, not the temp file
                raise UserError(f"{where}: {str(exc).removeprefix(f'{member_path}: ')}") from None
            learned = fold.genres if fold else classes
            if member_classes != learned:
                raise UserError(f"{where} predicts another class list than the blend "
                                f"({len(member_classes)} classes, the blend {len(learned)}): "
                                "rebuild the blend from models of one run (dvc repro blend)")
            unknown = [f for f in member_features if f not in features]
            if unknown:
                raise UserError(f"{where} takes features the blend does not: "
                                f"{', '.join(unknown)}")
            columns = np.array([features.index(f) for f in member_features])
            members.append((entry["name"], model, columns, float(entry["weight"])))
    return (Blend(members, len(fold.genres if fold else classes), float(spec["temperature"]),
                  spec.get("fallback"), left, fold), classes, features)


def read_member(path: Path, name: str):
    """A JSON member of a saved .keras model, or None when it has none (or is a tree file)."""
    path = Path(path)
    if path.suffix == TREE_SUFFIX:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            if name not in archive.namelist():
                return None
            return json.loads(archive.read(name))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None


def _features_in(archive: zipfile.ZipFile) -> list[str]:
    if FEATURES_MEMBER not in archive.namelist():
        return list(FEATURES)  # saved before models recorded their features: all 15
    features = json.loads(archive.read(FEATURES_MEMBER))
    if (not isinstance(features, list) or not features
            or not all(isinstance(f, str) and f in FEATURES for f in features)):
        raise ValueError(f"{FEATURES_MEMBER} is not a list of feature names")
    return features


def _missing_file(path: Path) -> UserError:
    return UserError(f"{path}: model file not found (train it: dvc repro, or get it: dvc pull)")


def _not_ours(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path}: not a model saved by this project ({exc})")


def read_features(path: Path) -> list[str]:
    """The feature list a saved model takes, without loading the model (no TensorFlow)."""
    return read_classes_and_features(path)[1]


def read_classes_and_features(path: Path) -> tuple[list[str], list[str]]:
    """The class list a saved model answers in and the feature list it takes, without
    loading the model (no TensorFlow)."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path)
    if path.suffix == TREE_SUFFIX:
        from stages import trees  # noqa: PLC0415

        return trees.read_header(path)[:2]
    try:
        with zipfile.ZipFile(path) as archive:
            classes = json.loads(archive.read(CLASSES_MEMBER))
            features = _features_in(archive)
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{CLASSES_MEMBER} is not a list of class names")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None
    return classes, features


def _ranges_in(archive: zipfile.ZipFile) -> dict[str, list[float]] | None:
    if RANGES_MEMBER not in archive.namelist():
        return None  # saved before models recorded ranges: no plausibility check
    ranges = json.loads(archive.read(RANGES_MEMBER))
    if not isinstance(ranges, dict) or not all(
            name in FEATURES and isinstance(pair, list) and len(pair) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) for v in pair) and pair[0] <= pair[1]
            for name, pair in ranges.items()):
        raise ValueError(f"{RANGES_MEMBER} is not {{feature: [min, max]}}")
    return {name: [float(low), float(high)] for name, (low, high) in ranges.items()}


def read_ranges(path: Path) -> dict[str, list[float]] | None:
    """Each feature's training range {feature: [min, max]} stored with a model, or None
    (a model saved without them)."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path)
    if path.suffix == TREE_SUFFIX:
        from stages import trees  # noqa: PLC0415

        ranges = trees.read_header(path)[2]["ranges"]
        return {f: [float(low), float(high)] for f, (low, high) in ranges.items()} if ranges else None
    try:
        with zipfile.ZipFile(path) as archive:
            return _ranges_in(archive)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None


def load_model(path: Path, unloaded=()):
    """Load a saved model: (model, class list, feature list); a clear error when missing or broken.

    A tree family's ``.npz`` is read with ``np.load(allow_pickle=False)`` and checked; a
    blend loads each of its members this way and checks that they share its class list
    (members named in ``unloaded`` are only checked: see _load_blend).

    Keras' loader runs in safe mode (the default): a file with Python lambdas or
    custom objects is refused, so a model pulled from a remote executes no code of its own.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path)
    if path.suffix == TREE_SUFFIX:
        from stages import trees  # noqa: PLC0415

        return trees.load(path)
    if is_blend(path):
        return _load_blend(path, unloaded)
    import keras  # noqa: PLC0415 - callers run stages.tf_setup.quiet_tensorflow() first

    try:
        with zipfile.ZipFile(path) as archive:
            classes = json.loads(archive.read(CLASSES_MEMBER))
            features = _features_in(archive)
        model = keras.models.load_model(path, safe_mode=True)
        width = model.input_shape[-1]
        if width != len(features):
            raise ValueError(f"the model takes {width} values, its feature list names "
                             f"{len(features)}")
        calibration = read_member(path, CALIBRATION_MEMBER)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None
    if calibration is not None:
        temperature = calibration.get("temperature") if isinstance(calibration, dict) else None
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise _not_ours(path, ValueError(f"{CALIBRATION_MEMBER}: temperature {temperature!r}"))
        model = Calibrated(model, temperature)
    return model, classes, features


PREDICT_BATCH = 1024  # rows per network call, every call (see _network_proba)
# Rows per pass through a model in predict_proba (a multiple of PREDICT_BATCH, so the
# networks' batches and every answer stay the same bits): each pass makes a few
# rows x classes float64 arrays, and large ones come as fresh pages from the system every
# time (the published blend on 100,000 rows: 4,536-4,727 rows/s in one pass, 5,218-5,428
# in passes of 16,384 rows).
PROBA_CHUNK_ROWS = 16 * PREDICT_BATCH


def predict_proba(model, x):
    """Class probabilities, shape (n, classes), for float32 features x of shape (n, len(features)).

    The one place every stage (evaluate, publish, predict) gets probabilities from, in
    passes of at most PROBA_CHUNK_ROWS rows.
    An object with its own ``predict_proba(x)`` (a tree-model family) answers itself;
    a Keras model gets direct calls in large batches: much faster than
    ``model.predict`` for models this small.
    """
    import numpy as np  # noqa: PLC0415

    if len(x) > PROBA_CHUNK_ROWS:
        return np.concatenate([predict_proba(model, x[begin : begin + PROBA_CHUNK_ROWS])
                               for begin in range(0, len(x), PROBA_CHUNK_ROWS)])
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(x))
    return _network_proba(model, x)


def _network_proba(model, x):
    """A network's probabilities, computed in batches of exactly PREDICT_BATCH rows (the
    last one padded): TensorFlow's kernels block and vectorise by the batch's shape, so
    with one shape for every call a row's answer does not depend on which rows share its
    batch (a file predicted in chunks answers as predicted whole)."""
    import numpy as np  # noqa: PLC0415

    x = np.asarray(x, dtype="float32")
    forward = _graph(model, x.shape[1])
    parts = []
    for begin in range(0, len(x), PREDICT_BATCH):
        batch = x[begin : begin + PREDICT_BATCH]
        rows = len(batch)
        if rows < PREDICT_BATCH:
            batch = np.concatenate([batch, np.repeat(batch[-1:], PREDICT_BATCH - rows, axis=0)])
        parts.append(np.asarray(forward(batch))[:rows])
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype="float32")


_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _graph(model, width: int):
    """The model's forward pass traced once as a TensorFlow graph for the one batch shape:
    eager calls spend more time dispatching ops than computing them (measured: the LSTM
    predicts about twice as fast, the MLP about a quarter faster)."""
    import tensorflow as tf  # noqa: PLC0415

    key = (width, PREDICT_BATCH)
    graphs = _GRAPHS.setdefault(model, {})
    if key not in graphs:
        graphs[key] = tf.function(
            lambda batch: model(batch, training=False), reduce_retracing=False,
            autograph=False, jit_compile=not _recurrent(model),
            input_signature=[tf.TensorSpec([PREDICT_BATCH, width], tf.float32)])
    return graphs[key]


def _recurrent(model) -> bool:
    """True for a network with a recurrent layer. The others are compiled with XLA, which
    fuses their small elementwise ops (measured, 20,480 test rows on 2 cores: the MLP
    20,594 -> 47,530 rows/s, the softmax 757,060 -> 1,003,193); the unrolled LSTM gets
    slower (31,290 -> 28,453)."""
    import keras  # noqa: PLC0415

    return any(isinstance(layer, keras.layers.RNN) for layer in getattr(model, "layers", ()))
