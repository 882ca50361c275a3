"""params.yaml, validated: every stage reads its section through ``load_section``.

Unknown keys are errors (a typo such as ``lstm.unit`` must not silently fall back
to a default), and every error names the param path, the bad value and what is
allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.common import FEATURE_SETS, UserError

PARAMS_FILE = Path("params.yaml")
NETWORKS = ("softmax", "mlp", "lstm")  # Keras models
TREES = ("forest", "boosting")  # scikit-learn tree models (stages/trees.py), scored beside them
FAMILIES = NETWORKS + TREES
BLEND = "blend"  # the weighted mean of the families' probabilities (stage blend)
MODELS = FAMILIES + (BLEND,)  # what param `model` may publish
# What the saved models are fitted on: train (validation held out) | train+val (refitted with
# the epochs / rounds / temperature that validation chose, on both splits; never test)
FINAL_FITS = ("train", "train+val")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class FetchParams(Section):
    url: str = Field(min_length=1)
    # sha256 of the parsed table in a canonical form (stages.fetch.canonical_table): the
    # same rows in another spelling (CRLF, BOM, quoting, float spelling) share it
    content_sha256: Sha256 | None = None
    sha256: Sha256 | None = None  # optional: also pin the decompressed file's exact bytes


class SplitParams(Section):
    strategy: Literal["recording", "group", "random"] = "recording"
    test_size: float = Field(0.2, gt=0, lt=1)
    val_size: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(42, ge=0)


class MergeGenresParams(Section):
    # none: one class per genre | study: taxonomies/study.yaml (the study's 114 -> 66) |
    # learned: taxonomies/learned.yaml, built by stage taxonomy from non-test confusions
    strategy: Literal["none", "study", "learned"] = "none"
    n_groups: int = Field(66, ge=1)  # classes of the learned taxonomy
    max_group_size: int = Field(20, ge=1)  # most genres in one learned class
    # genres: every family learns the genres and answers at the merged classes, its
    # probabilities summed per class | classes: every family retrains on the merged classes
    train_on: Literal["genres", "classes"] = "genres"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "enabled" in data:
            raise ValueError("enabled was replaced by strategy: none | study | learned "
                             "(enabled: true is strategy: study)")
        return data


PositiveInt = Annotated[int, Field(ge=1)]
Inputs = Literal["standardized", "log", "engineered"]


class TrainParams(Section):
    """Settings every model family shares."""

    inputs: Inputs = "engineered"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = Field(0.0, ge=0, lt=1)
    patience: int = Field(5, ge=1)
    seed: int = Field(42, ge=0)
    # > 0: train on targets (1 - s) * one-hot + s / classes (Keras CategoricalCrossentropy)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class SoftmaxParams(TrainParams):
    pass


# how each scaled feature is embedded: linear (Dense + ReLU per feature) | periodic (PLR,
# Gorishniy et al. 2022: sin/cos of learned frequencies, then Dense + ReLU per feature)
NumericEmbedding = Literal["linear", "periodic"]
Frequencies = Annotated[int, Field(ge=1)]  # periodic: frequencies per feature
FrequencyScale = Annotated[float, Field(gt=0, le=100)]  # periodic: sigma of their N(0, sigma) init


class MlpParams(TrainParams):
    hidden: list[PositiveInt] = Field(default_factory=lambda: [512, 256, 256], min_length=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    dropout_at: Literal["first", "all"] = "all"
    batch_norm: bool = True
    embedding_dim: int = Field(0, ge=0)  # > 0: each feature's embedding width (NumericEmbedding)
    numeric_embedding: NumericEmbedding = "linear"
    embedding_frequencies: Frequencies = 16
    frequency_scale: FrequencyScale = 0.1
    # > 1: TabM-style ensemble (Gorishniy et al. 2024) of this many members, each trained on
    # its own loss; the model outputs the mean of their probabilities
    ensemble_size: int = Field(1, ge=1, le=64)
    # mini: members share the dense layers, each scales the input its own way and has its
    # own head (TabM-mini) | batch: every dense layer gets per-member input and output
    # scales and biases (TabM, BatchEnsemble) | packed: every member has its own weights
    ensemble_style: Literal["mini", "batch", "packed"] = "mini"
    # > 0: the model accepts missing features (NaN in its input): training hides each
    # feature of each row with this probability, so one network serves any subset
    feature_dropout: float = Field(0.0, ge=0, lt=1)
    # with feature_dropout > 0: the share of rows that also lose popularity and explicit
    # together (what Spotify's audio-features API lacks), to learn that common case as such
    popularity_dropout: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _periodic_needs_a_width(self):
        if self.numeric_embedding == "periodic" and self.embedding_dim < 1:
            raise ValueError("numeric_embedding periodic needs embedding_dim >= 1 "
                             "(the width of each feature's embedding)")
        return self


class LstmParams(TrainParams):
    inputs: Literal["standardized", "log"] = "log"  # one value per step: no one-hots
    variant: Literal["dense_lstm", "stacked", "token"] = "token"
    step_units: int = Field(64, ge=1)
    # token: how each step's embedding of its value is made (NumericEmbedding), step_units wide
    numeric_embedding: NumericEmbedding = "linear"
    embedding_frequencies: Frequencies = 16
    frequency_scale: FrequencyScale = 0.1
    lstm_units: list[PositiveInt] = Field(default_factory=lambda: [128], min_length=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    unroll: bool = True

    @model_validator(mode="after")
    def _periodic_needs_tokens(self):
        if self.numeric_embedding == "periodic" and self.variant != "token":
            raise ValueError("numeric_embedding periodic embeds each step's value: it needs "
                             f"variant token, not {self.variant}")
        return self



class ForestParams(Section):
    """scikit-learn RandomForestClassifier (bootstrap rows, gini)."""

    n_estimators: int = Field(200, ge=1)
    max_features: int = Field(3, ge=1, le=15)  # features tried per split; 3 = sqrt(15)
    min_samples_leaf: int = Field(1, ge=1)
    seed: int = Field(42, ge=0)


class BoostingParams(Section):
    """Gradient-boosted trees, early stopping on the validation loss: LightGBM, or
    scikit-learn's HistGradientBoostingClassifier (the same params, the same meaning but
    for feature_fraction: per tree in LightGBM, per split in scikit-learn)."""

    # lightgbm: a fit about half as long, as accurate on validation (docs/results.md)
    library: Literal["lightgbm", "scikit-learn"] = "lightgbm"
    learning_rate: float = Field(0.15, gt=0, le=1)
    # share of the features each tree may split on: LightGBM draws them per tree (its
    # feature_fraction, from `seed`); scikit-learn has no per-tree draw and takes the share
    # at each split (its max_features)
    feature_fraction: float = Field(0.7, gt=0, le=1)
    max_leaf_nodes: int = Field(63, ge=2)
    min_samples_leaf: int = Field(40, ge=1)
    l2_regularization: float = Field(10.0, ge=0)  # without it rare classes' leaves blow up
    max_rounds: int = Field(300, ge=1)  # upper bound; early stopping usually ends sooner
    patience: int = Field(10, ge=1)  # rounds without a better validation loss before stopping
    seed: int = Field(42, ge=0)


class BlendParams(Section):
    """Stage blend: which families it may weigh, and the smallest weight a member keeps."""

    members: list[Literal[FAMILIES]] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    # a family whose fitted weight is below this is left out (and the rest refitted): a
    # member that hardly changes the answer costs its whole prediction time
    min_weight: float = Field(0.01, ge=0, lt=1)

    @model_validator(mode="after")
    def _no_repeats(self):
        repeated = sorted({m for m in self.members if self.members.count(m) > 1})
        if repeated:
            raise ValueError(f"members lists {', '.join(repeated)} more than once")
        return self


SECTIONS: dict[str, type[Section]] = {
    "fetch": FetchParams,
    "split": SplitParams,
    "merge_genres": MergeGenresParams,
    "softmax": SoftmaxParams,
    "mlp": MlpParams,
    "lstm": LstmParams,
    "forest": ForestParams,
    "boosting": BoostingParams,
    "blend": BlendParams,
}


def read_params_file(path: Path = PARAMS_FILE) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found (run from the repository root)") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of sections, got {type(data).__name__}")
    return data


def _describe(error: dict, section: str) -> str:
    loc = ".".join(str(p) for p in (section, *error["loc"]) if p != "__root__")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown param (typo?)"
    if kind == "missing":
        return f"{loc}: missing"
    value = error.get("input")
    msg = error["msg"].removeprefix("Value error, ")
    if error["loc"] == ():
        return f"{loc}: {msg}"
    return f"{loc} = {value!r}: {msg}"


def validate(section: str, raw, path: Path = PARAMS_FILE):
    """Validate one section's raw value; raise UserError naming every bad param."""
    schema = SECTIONS[section]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: {section}: must be a mapping, got {raw!r}")
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, section) for e in exc.errors())
        raise UserError(f"{path}: {problems}") from None


def load_section(section: str, path: Path = PARAMS_FILE):
    data = read_params_file(path)
    if section not in data:
        raise UserError(f"{path}: section {section!r} is missing")
    return validate(section, data[section], path)


def load_model_name(path: Path = PARAMS_FILE) -> str:
    data = read_params_file(path)
    name = data.get("model")
    if name not in MODELS:
        raise UserError(f"{path}: model = {name!r}: must be one of {', '.join(MODELS)}")
    return name


def load_feature_set(path: Path = PARAMS_FILE) -> str:
    """The `features` param: which feature set (stages.common.FEATURE_SETS) models train on."""
    data = read_params_file(path)
    name = data.get("features", "all")  # a params file from before the param: all 15
    if not isinstance(name, str) or name not in FEATURE_SETS:
        raise UserError(f"{path}: features = {name!r}: must be one of {', '.join(FEATURE_SETS)}")
    return name


def load_final_fit(path: Path = PARAMS_FILE) -> str:
    """The `final_fit` param (FINAL_FITS): what the saved models are fitted on."""
    data = read_params_file(path)
    name = data.get("final_fit", "train")  # a params file from before the param: train
    if name not in FINAL_FITS:
        raise UserError(f"{path}: final_fit = {name!r}: must be one of {', '.join(FINAL_FITS)}")
    return name
