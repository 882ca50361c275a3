"""Label tracks with a trained model: top-k genres and their probabilities.

    python -m stages.predict MODEL INPUT [-k 3] [-o OUT.csv] [--decimal ,]
                                         [--column SOURCE=FEATURE ...]

MODEL is a family name (softmax, mlp, lstm -> models/NAME.keras), genre-classifier
(the published model, models/genre-classifier.keras) or a path to a .keras file
(e.g. one fetched with `dvc artifacts get`). The model asks only for the features
it was trained on (all 15, or the 13 audio features with param features=audio).

INPUT is a CSV (separated by commas, ';' or tabs) with those feature columns, in any
order (other columns are ignored, except track_id, which is passed through), or what
Spotify's audio-features API returns: a file starting with `{` or `[` is read as JSON,
either {"audio_features": [...]}, a bare list of objects, one object, or JSON Lines;
each object's `id` becomes the track_id. Other files' column names are read through
stages.inputs.ALIASES, or renamed with --column. Rows or entries with a missing or
non-numeric feature, a row with more or fewer fields than the header, and null entries
(the API's answer for an unknown id) are reported on stderr and skipped; so are rows with
a value far outside the model's training range (one line per column), when the model
stores its ranges. The input is read and written in chunks: memory does not grow with it.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np
import pandas as pd

from stages.common import (
    AUDIO_FEATURES,
    FEATURES,
    ID_COLUMN,
    PUBLISHED_MODEL,
    PUBLISHED_NAME,
    UserError,
    atomic_path,
    cli,
)
from stages.inputs import DEFAULT_CHUNK_ROWS, InputReader, PlausibilityCheck, parse_renames
from stages.model_files import PREDICT_BATCH, family_file
from stages.params import MODELS
from stages.ranking import top_k_classes  # the tie rule evaluate counts with

# the MLP that was trained on the 13 audio features alone, until one network took any subset
RETIRED_AUDIO_NAME = "genre-classifier-audio"
MAX_REPORTED_ROWS = 20
# Track data, not audio descriptors: the audio-features API never returns them.
NOT_FROM_THE_API = [f for f in FEATURES if f not in AUDIO_FEATURES]


def model_path(name: str) -> Path:
    if name in MODELS:
        return family_file(name)
    if name == RETIRED_AUDIO_NAME and not Path(name).exists():
        raise UserError(f"{name}: retired: the published {PUBLISHED_NAME} answers files with only "
                        f"the {len(AUDIO_FEATURES)} audio features (python -m stages.predict "
                        f"{PUBLISHED_NAME} FILE)")
    return {PUBLISHED_NAME: PUBLISHED_MODEL}.get(name, Path(name))


def missing_features_error(path: Path, noun: str, missing: list[str],
                           features: list[str]) -> UserError:
    message = f"{path}: missing feature {noun}(s) {', '.join(missing)}"
    # The usual case: audio features from the API fed to a model of all 15.
    if set(features) == set(FEATURES) and set(missing) <= set(NOT_FROM_THE_API):
        message += (f": this model takes all {len(FEATURES)} features; the published "
                    f"{PUBLISHED_NAME} answers without them (python -m stages.predict "
                    f"{PUBLISHED_NAME} FILE)")
    return UserError(message)


def features_to_hide(path: Path, missing: list[str], present: list[str], features: list[str],
                     masking: dict | None, noun: str, use_popularity: bool,
                     say: Callable[[str], None]) -> list[str]:
    """The one place that decides what a model does without some of its features; returns
    the features it answers without (in the model's order).

    A model that takes missing features (``masking``: its MISSING_MEMBER) answers
    without the columns the file lacks, down to ``min_features``, and leaves out
    popularity and explicit unless ``use_popularity``: popularity measured at another
    time or in another dataset does not mean what it meant in the training data. Any
    other model needs every one of its features.
    """
    if masking is None:
        if missing:
            raise missing_features_error(path, noun, missing, features)
        return []
    left_out = [] if use_popularity else [f for f in present if f in NOT_FROM_THE_API]
    hidden = [f for f in features if f in missing or f in left_out]
    fewest = int(masking.get("min_features", 1))
    if len(features) - len(hidden) < fewest:
        raise UserError(f"{path}: only {len(features) - len(hidden)} of the model's "
                        f"{len(features)} features (missing {noun}(s): {', '.join(missing)}"
                        f"{'; popularity and explicit are left out unless --use-popularity' if left_out else ''}"
                        f"): it needs at least {fewest}")
    if left_out:
        say(f"{', '.join(left_out)} left out: popularity from another dataset or time does not "
            "mean what it meant in the training data (--use-popularity to use it)")
    if hidden:
        say(f"predicting without {', '.join(hidden)}: {missing_cost(masking, hidden)}")
    return hidden


def missing_cost(masking: dict, hidden: list[str]) -> str:
    """What answering without ``hidden`` costs, as the pipeline measured it on the test split."""
    accuracy = masking.get("test_accuracy") or {}
    if "" not in accuracy:
        return "its cost was not measured for this model file (the published one carries it)"
    full = f"with every feature {accuracy['']:.3f}"
    key = ",".join(hidden)
    if key in accuracy:
        return f"test accuracy {accuracy[key]:.3f} ({full})"
    return f"test accuracy not measured for this set of missing features ({full})"


def top_k_table(proba: np.ndarray, classes: list[str], k: int,
                label: str = "genre") -> pd.DataFrame:
    k = min(k, proba.shape[1])
    top = top_k_classes(proba, k)
    names = np.asarray(classes)
    table = {}
    for rank in range(k):
        table[f"{label}_{rank + 1}"] = names[top[:, rank]]
        table[f"prob_{rank + 1}"] = np.round(np.take_along_axis(proba, top[:, rank:rank + 1], 1)[:, 0], 5)
    return pd.DataFrame(table)


class Answers:
    """How probabilities become the output table: top-k genres (plus the learned group of
    the first one and that group's summed probability, when the model carries its genre
    hierarchy), or with ``level`` the top-k classes of the hierarchy at that many classes."""

    def __init__(self, model_file: Path, k: int, level: int | None):
        from stages.model_files import CLASSES_MEMBER, TAXONOMY_MEMBER, read_member  # noqa: PLC0415

        self.k, self.level = k, level
        self.hierarchy = read_member(model_file, TAXONOMY_MEMBER)
        if level is not None and self.hierarchy is None:
            from stages.adapt import is_adapted  # noqa: PLC0415

            if is_adapted(model_file):
                raise UserError(f"--level {level}: {model_file} is adapted to your own labels "
                                "(stages.adapt): it answers with them, at no other level")
            raise UserError(f"--level {level}: {model_file} carries no genre hierarchy (the "
                            f"published {PUBLISHED_NAME} does: dvc repro publish)")
        self.fold = None
        if self.hierarchy is not None:  # an impossible level fails before any input is read
            self.ready(read_member(model_file, CLASSES_MEMBER))

    def ready(self, classes: list[str]) -> None:
        """Check the level against the model's classes (an impossible one: one error line)."""
        from stages.taxonomy import DEFAULT_GROUP_LEVEL, level_fold  # noqa: PLC0415

        if self.level is not None:
            self.fold = level_fold(self.hierarchy, classes, self.level)
        elif self.hierarchy is not None and len(classes) > DEFAULT_GROUP_LEVEL:
            try:
                self.fold = level_fold(self.hierarchy, classes, DEFAULT_GROUP_LEVEL)
            except UserError:  # classes that do not nest in the groups: no group column
                self.fold = None

    def table(self, proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
        if self.level is not None:
            names, fold = self.fold
            return top_k_table(proba @ fold, names, self.k, label="class")
        table = top_k_table(proba, classes, self.k)
        if self.fold is not None:
            names, fold = self.fold
            group = fold.argmax(axis=1)[top_k_classes(proba, 1)[:, 0]]  # the first genre's
            table["group"] = np.asarray(names)[group]
            table["group_prob"] = np.round((proba @ fold)[np.arange(len(proba)), group], 5)
        return table




class CappedMessages:
    """Says the first MAX_REPORTED_ROWS skipped-row messages of a file, then how many more."""

    def __init__(self, say: Callable[[str], None], unit: str):
        self.say, self.unit, self.count = say, unit, 0

    def add(self, problems: list[tuple[int, str]]) -> None:
        for _, message in problems:
            self.count += 1
            if self.count <= MAX_REPORTED_ROWS:
                self.say(message)

    def finish(self) -> None:
        if self.count > MAX_REPORTED_ROWS:
            more = self.count - MAX_REPORTED_ROWS
            self.say(f"... {more} more {'entries' if self.unit == 'entry' else 'rows'} skipped")


def predict_tables(model_file: Path, input_path: Path, k: int, say: Callable[[str], None], *,
                   decimal: str = ".", renames: dict[str, str] | None = None,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS, level: int | None = None,
                   use_popularity: bool = False) -> Iterator[pd.DataFrame]:
    """The top-k table of each chunk's usable rows, in file order; every message about the
    input goes to ``say`` as it comes (``say`` adds the file name)."""
    from stages.model_files import (  # noqa: PLC0415
        MISSING_MEMBER,
        read_features,
        read_member,
        read_ranges,
    )

    # the feature list is read from the model's zip: input errors need no TensorFlow
    features = read_features(model_file)
    ranges = read_ranges(model_file)
    answers = Answers(model_file, k, level)
    with InputReader(input_path, features, decimal=decimal, renames=renames,
                     chunk_rows=chunk_rows) as reader:
        for note in reader.notes:
            say(note)
        present = [f for f in features if f not in reader.missing]
        hidden = features_to_hide(input_path, reader.missing, present, features,
                                  read_member(model_file, MISSING_MEMBER), reader.item,
                                  use_popularity, say)
        hidden_columns = [features.index(f) for f in hidden]
        plausibility = PlausibilityCheck(input_path, features, ranges, reader.unit)
        messages = CappedMessages(say, reader.unit)
        model = classes = None
        # Rows are predicted in groups fixed by their position in the file (lines or
        # entries k*B .. k*B+B-1, B = PREDICT_BATCH), whatever the chunks: a network's
        # float arithmetic depends on which rows share a call, so the answers do not
        # depend on the chunk size. A group cut by a chunk's end waits for the next chunk.
        pending = None
        for chunk in reader.chunks():
            messages.add(chunk.problems)
            chunk.values[:, hidden_columns] = np.nan  # NaN: missing, for a model that takes it
            usable = ~plausibility.skip(chunk.values, chunk.positions)
            ids = chunk.track_ids[usable] if chunk.track_ids is not None else None
            rows = Rows(chunk.values[usable], chunk.positions[usable], ids).after(pending)
            if not len(rows.positions):
                continue
            group = rows.positions // PREDICT_BATCH
            done = group < group[-1]  # the last group may go on in the next chunk
            pending = rows.take(~done)
            if not done.any():
                continue
            if model is None:
                model, classes = _load(model_file)
            yield rows.take(done).table(model, classes, answers, reader.unit)
        if pending is not None and len(pending.positions):
            if model is None:
                model, classes = _load(model_file)
            yield pending.table(model, classes, answers, reader.unit)
        messages.finish()
        plausibility.check_majority()
        for line in plausibility.summary():
            say(line)


def _load(model_file: Path):
    """The model and its classes, loaded once per process for a file that has not changed
    (predict_many's workers answer many files with one model)."""
    stat = Path(model_file).stat()
    return _load_cached(Path(model_file), Path(model_file).resolve(), stat.st_mtime_ns,
                        stat.st_size)


@functools.lru_cache(maxsize=2)
def _load_cached(model_file: Path, resolved: Path, mtime_ns: int, size: int):
    from stages.adapt import load_model  # noqa: PLC0415 - model_files', and adapted models
    from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415

    quiet_tensorflow()
    model, classes, _ = load_model(model_file)
    return model, classes


@dataclass
class Rows:
    """Usable rows of a file: feature values, positions (line or entry), track ids."""

    values: np.ndarray
    positions: np.ndarray
    track_ids: np.ndarray | None

    def after(self, earlier: "Rows | None") -> "Rows":
        if earlier is None or not len(earlier.positions):
            return self
        ids = None if self.track_ids is None else np.concatenate([earlier.track_ids,
                                                                   self.track_ids])
        return Rows(np.concatenate([earlier.values, self.values]),
                    np.concatenate([earlier.positions, self.positions]), ids)

    def take(self, mask: np.ndarray) -> "Rows":
        return Rows(self.values[mask], self.positions[mask],
                    None if self.track_ids is None else self.track_ids[mask])

    def table(self, model, classes: list[str], answers: "Answers", unit: str) -> pd.DataFrame:
        """The output rows: one model call per position group (see predict_tables)."""
        from stages.model_files import predict_proba  # noqa: PLC0415

        group = self.positions // PREDICT_BATCH
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        x = self.values.astype("float32")
        proba = np.concatenate([predict_proba(model, part) for part in np.split(x, starts[1:])])
        table = answers.table(proba, classes)
        table.insert(0, unit, self.positions)
        if self.track_ids is not None:
            table.insert(0, ID_COLUMN, self.track_ids)
        return table


@dataclass(frozen=True)
class Options:
    """How a file is read and answered (predict's options, shared with predict_many)."""

    k: int = 3
    decimal: str = "."
    renames: dict[str, str] | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    level: int | None = None
    use_popularity: bool = False

    def reader(self) -> dict:
        return {"decimal": self.decimal, "renames": self.renames, "chunk_rows": self.chunk_rows,
                "level": self.level, "use_popularity": self.use_popularity}


def predict_file(model_file: Path, input_path: Path, output: Path,
                 say: Callable[[str], None], options: Options = Options()) -> int:
    """Predict one input file into ``output`` (written atomically: all of it or nothing);
    the number of rows written. The one code path of ``predict -o`` and of every file of
    ``predict_many``, so both write the same bytes."""
    tables = predict_tables(model_file, input_path, options.k, say, **options.reader())
    with atomic_path(output, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            return write_tables(tables, handle, input_path)


def write_tables(tables: Iterator[pd.DataFrame], handle: TextIO, input_path: Path) -> int:
    """Write each table as it comes (one header); the number of rows written."""
    rows = 0
    for table in tables:
        table.to_csv(handle, index=False, header=rows == 0)
        rows += len(table)
    if rows == 0:
        raise UserError(f"{input_path}: no row could be predicted")
    return rows


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict", description="Label tracks with a trained model.")
    parser.add_argument("model", help="genre-classifier (the published model) | softmax | mlp | "
                        "lstm | forest | boosting | blend, or a path to a model file (.keras, .npz "
                        "for a tree family, .zip for a blend or a model adapted to your own "
                        "labels by stages.adapt)")
    parser.add_argument("input", type=Path, help="CSV with the model's feature columns, "
                        "or the JSON of Spotify's audio-features API")
    parser.add_argument("-k", type=int, default=3, help="how many genres per track (default 3)")
    parser.add_argument("-o", "--output", type=Path, help="output CSV (default: stdout)")
    parser.add_argument("--decimal", choices=[".", ","], default=".",
                        help="the input's decimal mark (default '.'; ',' for 0,856)")
    parser.add_argument("--column", action="append", metavar="SOURCE=FEATURE",
                        help="read the input's column SOURCE as FEATURE (repeatable; "
                        "FEATURE=duration_s reads seconds as duration_ms)")
    parser.add_argument("--level", type=int, metavar="K",
                        help="answer with the K classes of the model's learned genre hierarchy "
                        "(probabilities summed within each class)")
    parser.add_argument("--use-popularity", action="store_true",
                        help="use the file's popularity and explicit (by default a model that "
                        "takes missing features answers without them)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help=argparse.SUPPRESS)  # tests: chunk boundaries in small files
    args = parser.parse_args(argv)
    if args.k < 1:
        raise UserError(f"-k {args.k}: must be >= 1")
    renames = parse_renames(args.column)
    model_file = model_path(args.model)
    if not model_file.is_file():
        raise UserError(f"{model_file}: model file not found (train it: dvc repro, or get it: dvc pull)")

    def say(message: str) -> None:
        print(f"{args.input}: {message}", file=sys.stderr, flush=True)

    options = Options(k=args.k, decimal=args.decimal, renames=renames,
                      chunk_rows=args.chunk_rows, level=args.level,
                      use_popularity=args.use_popularity)
    if args.output:
        rows = predict_file(model_file, args.input, args.output, say, options)
        print(f"predict: {rows} rows -> {args.output}", file=sys.stderr)
    else:
        try:
            write_tables(predict_tables(model_file, args.input, options.k, say,
                                        **options.reader()), sys.stdout, args.input)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. piped into `head`: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
