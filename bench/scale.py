"""How each stage's time and memory grow with the data: ``python -m bench.scale``.

    SPOTIFY_TRACKS_URL=/path/spotify_tracks.csv.gz python -m bench.scale [--sizes 1 2 4 8]
        [--out bench/results] [--stop-after-s 3600]

The real dataset is enlarged to each size by ``enlarge``: size F keeps every real row and
adds F-1 copies of it, each with a small jitter on the continuous features (normal noise of
``JITTER`` times the feature's standard deviation, clipped to the feature's real range;
``duration_ms`` stays an integer). A copy keeps its original's track_id, artists, names
and genre, so the recording split puts an original and all its copies in one split. The
generator is deterministic (copy c of every row draws from ``default_rng([seed, c])``, so
the 2x table is part of the 4x one) and writes to a temp dir: the enlarged data never
enters the pipeline's data or git.

Each size runs the whole pipeline in a throwaway copy of the project (bench.workspace:
fresh git repo, empty DVC cache), one ``dvc repro -s STAGE`` per stage, with the same short
training budgets at every size (``BUDGETS``), timing each stage's wall time (dvc's own
overhead included, about 2 s), its CPU time (user + system of the process tree: less
sensitive than the wall time to other load on shared cores) and the peak RSS of its
process tree's largest process (getrusage of the children). Results go to OUT/scale.json after every size (a partial run
keeps what it measured) and OUT/scale.png (time and RSS against rows, log-log, per stage);
``python -m bench.table --scale`` prints the table with each stage's fitted growth exponent
and the extrapolated wall (see ``extrapolate``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.workspace import (
    commit_all,
    copy_project,
    pipeline_stages,
    set_params,
    shown_command,
    timed_stage,
)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"
SIZES = (1, 2, 4, 8)
SEED = 19
JITTER = 0.01  # noise standard deviation, as a share of the feature's standard deviation
CONTINUOUS = ["duration_ms", "danceability", "energy", "loudness", "speechiness",
              "acousticness", "instrumentalness", "liveness", "valence", "tempo"]
# Short budgets, the same at every size: the growth with rows is what is measured.
BUDGETS = {
    "softmax": {"epochs": 1, "patience": 1},
    "mlp": {"epochs": 1, "patience": 1},
    "lstm": {"epochs": 1, "patience": 1},
    "forest": {"n_estimators": 20},
    "boosting": {"max_rounds": 5, "patience": 5},
    "fetch": {"content_sha256": None, "sha256": None},  # an enlarged table on purpose
}
# The machine the walls are for (2 cores shared, 24 GB): a stage hits the memory wall when
# its peak RSS would pass MEMORY_WALL_MB, the time wall when one run of it would pass
# TIME_WALL_S (a working day of one stage: not a hard limit, a convention stated as such).
MEMORY_WALL_MB = 24 * 1024
TIME_WALL_S = 8 * 3600


def enlarge(frame: pd.DataFrame, factor: int, seed: int = SEED) -> pd.DataFrame:
    """The raw table with ``factor - 1`` jittered copies of every row appended (block by
    block: all first copies, then all second copies...). Pure and deterministic."""
    if factor < 1:
        raise ValueError(f"factor {factor}: must be >= 1")
    columns = [c for c in CONTINUOUS if c in frame.columns]
    values = frame[columns].to_numpy(dtype=np.float64)
    scale = JITTER * np.nanstd(values, axis=0)
    low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    blocks = [frame]
    for copy in range(1, factor):
        rng = np.random.default_rng([seed, copy])
        jittered = np.clip(values + rng.normal(0.0, 1.0, values.shape) * scale, low, high)
        block = frame.copy()
        for j, column in enumerate(columns):
            if pd.api.types.is_integer_dtype(frame[column].dtype):
                block[column] = np.rint(jittered[:, j]).astype(frame[column].dtype)
            else:
                block[column] = jittered[:, j]
        blocks.append(block)
    out = pd.concat(blocks, ignore_index=True)
    if "Unnamed: 0" in out.columns:  # the published file's row index: renumbered
        out["Unnamed: 0"] = np.arange(len(out))
    return out


def read_real(source: str) -> pd.DataFrame:
    return pd.read_csv(source, keep_default_na=False, na_values=[""],
                       dtype={"explicit": str})


def write_enlarged(frame: pd.DataFrame, factor: int, path: Path) -> Path:
    big = enlarge(frame, factor)
    big = big.rename(columns={"Unnamed: 0": ""})
    big.to_csv(path, index=False, float_format="%.6g")
    return path


def measure_size(factor: int, real: pd.DataFrame, workdir: Path, result: dict,
                 out: Path) -> None:
    """Run every stage on the data enlarged ``factor`` times; results saved after each stage
    (a size cut short keeps the stages it measured, marked incomplete)."""
    data = write_enlarged(real, factor, workdir / f"tracks-{factor}x.csv")
    repo = copy_project(REPO, workdir / f"repo-{factor}x")
    set_params(repo, BUDGETS)
    commit_all(repo, f"bench.scale budgets, {factor}x data")
    env = {"SPOTIFY_TRACKS_URL": str(data)}
    size = {"factor": factor, "rows_raw": len(real) * factor, "rows_clean": None,
            "complete": False, "stages": {}}
    result["partial"] = size
    for stage in pipeline_stages(repo):
        size["stages"][stage] = timed_stage(repo, stage, env, "bench.scale")
        if stage == "split":  # its report counts the clean rows
            report = json.loads((repo / "reports/data.json").read_text())
            size["rows_clean"] = report["cleaning"]["rows_clean"]
        print(f"bench.scale {factor}x: {stage} {size['stages'][stage]}", flush=True)
        save(result, out)
    data.unlink()
    size["complete"] = True
    del result["partial"]
    result["sizes"].append(size)
    result["sizes"].sort(key=lambda s: s["factor"])
    save(result, out)


def fit_exponent(rows: list[float], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(rows): value ~ rows ** exponent."""
    if len(rows) < 2:
        return None
    slope, _ = np.polyfit(np.log(rows), np.log(np.maximum(values, 1e-9)), 1)
    return float(slope)


def extrapolate(result: dict) -> dict:
    """Per stage: the growth exponents of wall time and peak RSS over the measured sizes, and
    the rows (extrapolated, not measured) at which it would hit each wall: time from the
    fitted power law, memory from a straight line through the two largest sizes (RSS is a
    fixed base, the interpreter and libraries, plus a part that grows with rows: a power
    law through the base would flatten it). A size cut short counts for the stages it
    measured."""
    every = measured_sizes(result)
    out = {}
    for stage in (every[0]["stages"] if every else []):
        sizes = [s for s in every if stage in s["stages"]]
        if len(sizes) < 2:
            continue
        rows = [s["rows_clean"] for s in sizes]
        times = [s["stages"][stage]["seconds"] for s in sizes]
        cpu = [s["stages"][stage].get("cpu_seconds", np.nan) for s in sizes]
        rss = [s["stages"][stage]["peak_rss_mb"] for s in sizes]
        t_exp, m_exp = fit_exponent(rows, times), fit_exponent(rows, rss)
        c_exp = fit_exponent(rows, cpu) if np.isfinite(cpu).all() else None
        # the CPU time's exponent when measured (on shared cores the wall time swells with
        # whatever else runs, the CPU time much less), and never below 1: a slope under 1
        # is a fixed start-up cost (interpreter, TensorFlow) not yet amortised
        growth = max(c_exp if c_exp is not None else t_exp, 1.0)
        t_rows = rows[-1] * (TIME_WALL_S / times[-1]) ** (1 / growth)
        slope = (rss[-1] - rss[-2]) / (rows[-1] - rows[-2])
        m_rows = rows[-1] + (MEMORY_WALL_MB - rss[-1]) / slope if slope > 0 else None
        out[stage] = {"time_exponent": round(t_exp, 2),
                      "cpu_exponent": round(c_exp, 2) if c_exp is not None else None,
                      "rss_exponent": round(m_exp, 2),
                      "rss_mb_per_million_rows": round(slope * 1e6),
                      "rows_at_time_wall": int(t_rows) if t_rows else None,
                      "rows_at_memory_wall": int(m_rows) if m_rows else None}
    return out


def measured_sizes(result: dict) -> list[dict]:
    """The complete sizes, then the one cut short (once its rows are counted)."""
    partial = result.get("partial")
    return [*result["sizes"], *([partial] if partial and partial["rows_clean"] else [])]


def first_wall(walls: dict) -> tuple[str, str, int] | None:
    """(stage, "memory" or "time", rows) of the wall met at the fewest rows."""
    hits = [(info[f"rows_at_{kind}_wall"], stage, kind) for stage, info in walls.items()
            for kind in ("memory", "time") if info.get(f"rows_at_{kind}_wall")]
    if not hits:
        return None
    rows, stage, kind = min(hits)
    return stage, kind, rows


def plot(result: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    every = measured_sizes(result)
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 5))
    for i, stage in enumerate(every[0]["stages"]):
        sizes = [s for s in every if stage in s["stages"]]
        rows = [s["rows_clean"] for s in sizes]
        style = {"marker": "o", "label": stage, "color": plt.cm.tab20(i % 20),
                 "linestyle": "-" if i < 10 else "--"}
        left.plot(rows, [s["stages"][stage]["seconds"] for s in sizes], **style)
        middle.plot(rows, [s["stages"][stage].get("cpu_seconds", np.nan) for s in sizes],
                    **style)
        right.plot(rows, [s["stages"][stage]["peak_rss_mb"] for s in sizes], **style)
    for axis, label in ((left, "wall time (s)"), (middle, "CPU time, user + system (s)"),
                        (right, "peak RSS (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("clean rows")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    fig.suptitle(f"bench.scale: each stage against rows ({result['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result["extrapolated"] = extrapolate(result)
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    if measured_sizes(result):
        plot(result, out / "scale.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--stop-after-s", type=float, default=None,
                        help="measure no further size once this much time has passed")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    parser.add_argument("--append", action="store_true",
                        help="add the sizes to OUT/scale.json's complete ones (a size measured "
                        "later, or one that was cut short, measured again)")
    args = parser.parse_args(argv)
    source = os.environ.get("SPOTIFY_TRACKS_URL")
    if not source:
        raise SystemExit("bench.scale: set SPOTIFY_TRACKS_URL to the real dataset (a path)")
    real = read_real(source)
    result = {"command": shown_command("bench.scale", argv or sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "note": args.note, "budgets": BUDGETS, "jitter": JITTER, "seed": SEED,
              "walls": {"memory_mb": MEMORY_WALL_MB, "time_s": TIME_WALL_S}, "sizes": []}
    previous = args.out / "scale.json"
    if args.append and previous.exists():
        earlier = json.loads(previous.read_text())
        result["sizes"] = [s for s in earlier["sizes"] if s["factor"] not in args.sizes]
        result["command"] = f"{earlier['command']}; {result['command']}"
        result["note"] = earlier["note"] if earlier["note"] == args.note else \
            f"{earlier['note']}; then: {args.note}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spotify-genre-scale-") as tmp:
        for factor in args.sizes:
            if args.stop_after_s and time.monotonic() - started > args.stop_after_s:
                print(f"bench.scale: {factor}x not measured (--stop-after-s)", flush=True)
                result.setdefault("not_measured", []).append(factor)
                continue
            measure_size(factor, real, Path(tmp), result, args.out)
    save(result, args.out)


if __name__ == "__main__":
    main()
