"""Keras model builders, one per family.

Every model takes the raw values of its feature list (param ``features``: the 15
``stages.common.FEATURES`` or the 13 ``AUDIO_FEATURES``), shape (n, len(features)),
in that order. Transforms look features up by name and skip the ones a list lacks,
so a builder works on any subset. Scaling, log transforms, one-hot encodings and
the LSTM's sequence encoding all live inside the model, built only from stock
Keras layers and ``keras.ops`` calls, so a saved model loads with plain
``keras.models.load_model``.
"""

from __future__ import annotations

import numpy as np

from stages.common import API_MISSING, FEATURES, UserError

import keras  # noqa: E402  (callers run common.quiet_tensorflow() first)
from keras import layers, ops  # noqa: E402

# Long-tailed features: their log spreads the mass that sits near zero.
LOG_FEATURES = ("duration_ms", "speechiness", "acousticness", "instrumentalness", "liveness")
# Small integer codes better read as categories than as magnitudes.
ONE_HOT_FEATURES = {"key": 12, "time_signature": 6}


def _log_transform(inputs, features):
    """(n, f) -> (n, f): log of the long-tailed features present, the rest unchanged."""
    cols = [inputs[:, i : i + 1] for i in range(len(features))]
    for name in LOG_FEATURES:
        if name in features:
            i = features.index(name)
            shift = 1.0 if name == "duration_ms" else 1e-3  # avoid log(0)
            cols[i] = ops.log(ops.maximum(cols[i], 0.0) + shift)
    return ops.concatenate(cols, axis=-1)


def _one_hots(inputs, features):
    """One-hot codes of the categorical features present; None when there are none."""
    hots = []
    for name, depth in ONE_HOT_FEATURES.items():
        if name in features:
            i = features.index(name)
            code = ops.cast(ops.clip(ops.round(inputs[:, i]), 0, depth - 1), "int32")
            hots.append(ops.one_hot(code, depth))
    return ops.concatenate(hots, axis=-1) if hots else None


def _adapted_normalization(transform, train_x: np.ndarray, name: str):
    """A Normalization layer adapted on the training split, after ``transform``."""
    if transform is None:
        values = train_x
    else:
        probe_in = keras.Input((train_x.shape[1],))
        values = keras.Model(probe_in, transform(probe_in)).predict(
            train_x, batch_size=8192, verbose=0)
    if not np.all(np.isfinite(values)):
        raise UserError("training features contain NaN/inf after the input transform")
    norm = layers.Normalization(name=name)
    norm.adapt(values)
    return norm


def input_block(inputs, train_x: np.ndarray, kind: str, features: list[str]):
    """The model's input transform: 'standardized' (the study), 'log', or 'engineered'.

    'standardized' z-scores the raw values; 'log' first takes the log of the
    long-tailed ones; 'engineered' adds one-hot key and time_signature to 'log'.
    'standardized' and 'log' keep one value per feature (what the LSTM needs); the
    first len(features) columns of every variant are the scaled features.
    """
    if kind == "standardized":
        return _adapted_normalization(None, train_x, "standardize")(inputs)

    def log_transform(x):
        return _log_transform(x, features)

    scaled = _adapted_normalization(log_transform, train_x, "standardize")(log_transform(inputs))
    if kind == "log":
        return scaled
    if kind == "engineered":
        hots = _one_hots(inputs, features)
        if hots is None:  # a feature list without key and time_signature
            return scaled
        return layers.Concatenate(name="engineered")([scaled, hots])
    raise UserError(f"unknown input transform {kind!r}: standardized, log or engineered")


def _output(x, n_classes: int):
    return layers.Dense(n_classes, activation="softmax", name="genre")(x)


def build_softmax(train_x: np.ndarray, n_classes: int, p, features: list[str]) -> keras.Model:
    inputs = keras.Input((len(features),), name="features")
    x = input_block(inputs, train_x, p.inputs, features)
    return keras.Model(inputs, _output(x, n_classes), name="softmax")


def _feature_tokens(x, units: int, name: str):
    """(n, f) -> (n, f, units): each feature's own learned embedding of its value."""
    return layers.EinsumDense("bf,fd->bfd", output_shape=(x.shape[-1], units),
                              bias_axes="fd", activation="relu", name=name)(x)


def _periodic_tokens(x, p, width: int, name: str):
    """(n, f) -> (n, f, width): PLR embeddings (Gorishniy et al. 2022).

    Each feature's value v becomes [sin(2 pi c v), cos(2 pi c v)] for its own learned
    frequencies c (initialised N(0, frequency_scale)), then its own Dense + ReLU.
    """
    f, m = x.shape[-1], p.embedding_frequencies
    phase = layers.EinsumDense(
        "bf,fm->bfm", output_shape=(f, m), name=f"{name}_frequencies",
        kernel_initializer=keras.initializers.RandomNormal(stddev=p.frequency_scale))(x)
    phase = ops.multiply(phase, 2 * np.pi)
    periodic = layers.Concatenate(name=f"{name}_periodic")([ops.sin(phase), ops.cos(phase)])
    return layers.EinsumDense("bfi,fid->bfd", output_shape=(f, width),
                              bias_axes="fd", activation="relu", name=name)(periodic)


def _member_scale(x, k: int, name: str, bias: bool = False):
    """(n, k, d) -> (n, k, d): each ensemble member's own elementwise scale (and bias)."""
    return layers.EinsumDense("bkd,kd->bkd", output_shape=(k, x.shape[-1]), name=name,
                              kernel_initializer="ones", bias_axes="kd" if bias else None)(x)


def _random_signs(layer, seed: int) -> None:
    """TabM's first adapter starts at random +-1 signs, so the members differ from step one."""
    (kernel,) = layer.get_weights()
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=kernel.shape)
    layer.set_weights([signs.astype("float32")])


def _hidden_layer(x, units: int, depth: int, p):
    """One hidden Dense; for ensembles x is (n, k, d) and p.ensemble_style decides sharing."""
    k, style = p.ensemble_size, p.ensemble_style
    ensemble = k > 1
    bias = not p.batch_norm
    if ensemble and style == "packed":
        return layers.EinsumDense("bki,kij->bkj", output_shape=(k, units),
                                  bias_axes="kj" if bias else None, name=f"dense_{depth}")(x)
    if ensemble and style == "batch":
        if depth > 0:  # the first layer's input scale is the ensemble's input adapter
            x = _member_scale(x, k, f"member_in_{depth}")
        x = layers.Dense(units, use_bias=False, name=f"dense_{depth}")(x)
        return _member_scale(x, k, f"member_out_{depth}", bias=bias)
    return layers.Dense(units, use_bias=bias, name=f"dense_{depth}")(x)


def _hide_missing(x, present, features: list[str], kind: str):
    """Zero the input block's columns of missing features: their scaled value and, for
    'engineered', their one-hot code (a missing key is no key, not key 0)."""
    keep = [present]
    if kind == "engineered":
        for name, depth in ONE_HOT_FEATURES.items():
            if name in features:
                i = features.index(name)
                keep.append(ops.repeat(present[:, i : i + 1], depth, axis=1))
    return ops.multiply(x, ops.concatenate(keep, axis=-1) if len(keep) > 1 else present)


def build_mlp(train_x: np.ndarray, n_classes: int, p, features: list[str]) -> keras.Model:
    inputs = keras.Input((len(features),), name="features")
    n = len(features)
    masked = p.feature_dropout > 0  # NaN in the input marks a missing feature
    values = inputs
    if masked:
        is_missing = ops.isnan(inputs)
        missing = ops.cast(is_missing, "float32")
        present = ops.subtract(1.0, missing)
        values = ops.where(is_missing, ops.zeros_like(inputs), inputs)
    x = input_block(values, train_x, p.inputs, features)
    if masked:
        x = _hide_missing(x, present, features, p.inputs)
    if p.embedding_dim > 0:
        # per-feature embeddings of the scaled values, in front of the dense layers
        scaled = x[:, :n]
        if p.numeric_embedding == "periodic":
            tokens = _periodic_tokens(scaled, p, p.embedding_dim, "feature_tokens")
        else:
            tokens = _feature_tokens(scaled, p.embedding_dim, "feature_tokens")
        if masked:  # a missing feature's token is its own learned "missing" embedding
            learned_missing = layers.EinsumDense(
                "bf,fd->bfd", output_shape=(n, p.embedding_dim), name="missing_tokens")(missing)
            tokens = ops.add(ops.multiply(tokens, ops.expand_dims(present, -1)), learned_missing)
        x = layers.Concatenate(name="embedded")([layers.Flatten()(tokens), x])
    if masked:
        x = layers.Concatenate(name="with_missing_flags")([x, missing])
    k = p.ensemble_size
    if k > 1:
        # (n, d) -> (n, k, d): every member sees the same inputs ...
        x = layers.RepeatVector(k, name="members_in")(x)
        if p.ensemble_style != "packed":  # ... through its own input scale (TabM's adapter)
            adapter = layers.EinsumDense("bkd,kd->bkd", output_shape=(k, x.shape[-1]),
                                         name="member_adapter")
            x = adapter(x)
            _random_signs(adapter, p.seed)
    for depth, units in enumerate(p.hidden):
        x = _hidden_layer(x, units, depth, p)
        if p.batch_norm:
            x = layers.BatchNormalization(name=f"bn_{depth}")(x)
        x = layers.Activation("relu", name=f"relu_{depth}")(x)
        if p.dropout > 0 and (p.dropout_at == "all" or depth == 0):
            x = layers.Dropout(p.dropout, name=f"dropout_{depth}")(x)
    if k == 1:
        return keras.Model(inputs, _output(x, n_classes), name="mlp")
    # per-member heads; training fits the members ("members" output, see training_model),
    # the model itself answers with the mean of their probabilities
    logits = layers.EinsumDense("bkh,khc->bkc", output_shape=(k, n_classes), bias_axes="kc",
                                name="member_heads")(x)
    members = layers.Softmax(name=MEMBERS)(logits)
    mean = layers.GlobalAveragePooling1D(name="genre")(members)
    return keras.Model(inputs, mean, name="mlp")


# Fewest features a masked network answers from: below it predict refuses the file.
MIN_FEATURES = 8


def accepts_missing(model: keras.Model) -> bool:
    """True for a network built to take NaN for a missing feature (mlp.feature_dropout > 0)."""
    return any(layer.name == "with_missing_flags" for layer in model.layers)


def hidden_mask(shape: tuple[int, int], rate: float, features: list[str],
                rng: np.random.Generator, together_rate: float = 0.0) -> np.ndarray:
    """Which values to hide (True): each with probability ``rate``, and popularity and
    explicit together in a ``together_rate`` share of rows (what the audio-features API
    lacks, so the model learns that case as such)."""
    hidden = rng.random(shape) < rate
    together = [features.index(f) for f in API_MISSING if f in features]
    if together:
        rows = rng.random(shape[0]) < together_rate
        hidden[np.ix_(rows, together)] = True
    return hidden


MEMBERS = "members"  # the layer holding an ensemble's per-member probabilities (n, k, classes)


def training_model(model: keras.Model) -> keras.Model:
    """What to fit: the model itself, or for an ensemble a view on its members' outputs
    (shared weights), so each member is trained on its own loss."""
    names = [layer.name for layer in model.layers]
    if MEMBERS not in names:
        return model
    return keras.Model(model.inputs, model.get_layer(MEMBERS).output, name=f"{model.name}_members")


def targets(y: np.ndarray, n_classes: int, params, model: keras.Model) -> np.ndarray:
    """Class indices y as the targets compile_model's loss expects for ``model``'s output:
    indices, or one-hot rows with label smoothing; repeated per member for an ensemble."""
    y = np.asarray(y)
    shape = model.output_shape  # (None, classes) or (None, k, classes)
    if getattr(params, "label_smoothing", 0.0) > 0:
        y = np.eye(n_classes, dtype="float32")[y]
        if len(shape) == 3:
            y = np.broadcast_to(y[:, None, :], (len(y), shape[1], n_classes))
        return y
    if len(shape) == 3:
        y = np.broadcast_to(y[:, None], (len(y), shape[1]))
    return y


def build_lstm(train_x: np.ndarray, n_classes: int, p, features: list[str]) -> keras.Model:
    """The features as a sequence of len(features) steps, one feature per step.

    dense_lstm: the study's Dense(step_units) on each step's value, then the LSTM(s);
    stacked: the study's LSTMs straight on the values;
    token: each step gets its own learned embedding of its value (per-feature
    weights, so the LSTM knows which feature a step holds), then the LSTM(s); with
    numeric_embedding periodic that embedding is PLR (as the MLP's).
    """
    inputs = keras.Input((len(features),), name="features")
    x = input_block(inputs, train_x, p.inputs, features)
    n = len(features)
    if p.variant == "token" and p.numeric_embedding == "periodic":
        seq = _periodic_tokens(x, p, p.step_units, "feature_tokens")
    elif p.variant == "token":
        seq = _feature_tokens(x, p.step_units, "feature_tokens")
    else:
        seq = layers.Reshape((n, 1), name="as_sequence")(x)
        if p.variant == "dense_lstm":
            seq = layers.Dense(p.step_units, activation="relu", name="step_dense")(seq)
    for depth, units in enumerate(p.lstm_units):
        last = depth == len(p.lstm_units) - 1
        seq = layers.LSTM(units, return_sequences=not last, unroll=p.unroll,
                          name=f"lstm_{depth}")(seq)
    if p.dropout > 0:
        seq = layers.Dropout(p.dropout, name="dropout")(seq)
    return keras.Model(inputs, _output(seq, n_classes), name="lstm")


BUILDERS = {"softmax": build_softmax, "mlp": build_mlp, "lstm": build_lstm}


def build(family: str, train_x: np.ndarray, n_classes: int, params,
          features: list[str] = FEATURES) -> keras.Model:
    """The family's model for ``features`` (train_x holds those columns, in that order)."""
    if family not in BUILDERS:
        raise UserError(f"unknown model family {family!r}: one of {', '.join(BUILDERS)}")
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features:
        raise ValueError(f"not a feature list: {features!r}")
    train_x = np.asarray(train_x, dtype="float32")
    if train_x.ndim != 2 or train_x.shape[1] != len(features):
        raise ValueError(f"train_x has shape {train_x.shape}, expected (n, {len(features)})")
    return BUILDERS[family](train_x, n_classes, params, list(features))


def make_optimizer(params, steps_per_epoch: int):
    """Adam (AdamW with weight decay), with the params' learning-rate schedule."""
    if params.schedule == "cosine":
        total = max(params.epochs * steps_per_epoch, 1)
        warmup = min(steps_per_epoch, total // 10)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=params.learning_rate * 0.1 if warmup else params.learning_rate,
            decay_steps=total - warmup, alpha=0.01,
            warmup_target=params.learning_rate if warmup else None, warmup_steps=warmup,
        )
    else:
        learning_rate = params.learning_rate
    if params.weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate, weight_decay=params.weight_decay)
    return keras.optimizers.Adam(learning_rate)


# Families trained through XLA. Keras' "auto" leaves it off here; on 2 CPU cores it fuses
# the MLP's many small elementwise ops (its epoch 19 s -> 11 s), while the unrolled LSTM
# gets slower (9.5 s -> 11 s an epoch, plus 13 s compiling) and the softmax is too small to
# tell (measured 2026-11-30, 72,664 training rows).
XLA_FAMILIES = ("mlp",)


def compile_model(model: keras.Model, params, steps_per_epoch: int,
                  optimizer=None, xla: bool = False) -> keras.Model:
    """Compile for training; ``optimizer``: reuse that one (an ensemble's mean takes its
    members' optimizer, so the saved file holds the trained optimizer state); ``xla``:
    compile the training step with XLA (see XLA_FAMILIES)."""
    optimizer = optimizer or make_optimizer(params, steps_per_epoch)
    smoothing = getattr(params, "label_smoothing", 0.0)
    if smoothing > 0:  # one-hot targets (see targets()): Keras' sparse loss cannot smooth
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
        top5 = keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")
    else:
        loss = "sparse_categorical_crossentropy"
        top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy", top5],
                  jit_compile=xla)
    return model
