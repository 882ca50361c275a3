"""How fast predict answers: ``python -m bench.predict_speed``.

    SPOTIFY_TRACKS_URL=/path/spotify_tracks.csv.gz python -m bench.predict_speed
        [--models-dir models] [--rows 100000] [--big-rows 2000000] [--big-model forest]
        [--dask-model mlp --dask-files 4 --dask-rows 400000] [--out bench/results]

For each family and the published model (files in --models-dir):
- model-only rows/s: ``model_files.predict_proba`` on --rows real feature rows (the real
  table's rows, repeated), in this process, after a warm-up call;
- end-to-end rows/s: ``python -m stages.predict MODEL in.csv -o out.csv`` on a CSV of those
  rows, wall time of the whole command (interpreter, TensorFlow import and model load
  included), with the command's peak RSS; and the same on 1,000 rows, whose time is the
  fixed start-up cost, so the rate without it is given too.
Then end-to-end on a CSV of --big-rows rows (the 100k file repeated) with --big-model:
its rows/s against the same model's 100k rate, and its peak RSS (the issue's targets:
>= 90% of the 100k rate, <= 1 GB). Then the Dask path: --dask-rows rows in --dask-files
files, predicted by ``stages.predict_many --workers 2`` against one process predicting them
one after the other (``predict_file`` in a loop), and a byte comparison of the outputs;
``--workers 1`` (one worker of 2 threads) too, which separates Dask's own cost from that of
splitting the cores into two one-thread workers.

Every generated file lives in a temp dir (never in git). Writes OUT/predict_speed.json;
``python -m bench.table --predict-speed`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.workspace import shown_command, timed_command

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"
MODELS = {"softmax": "softmax.keras", "mlp": "mlp.keras", "lstm": "lstm.keras",
          "forest": "forest.npz", "boosting": "boosting.npz",
          "genre-classifier": "genre-classifier.keras"}
SMALL_ROWS = 1_000

def timed(command: list[str]) -> dict:
    """Wall seconds, CPU seconds (the command's process tree) and peak RSS (MB, the largest
    process of its tree) of one command; for predict_many also its tasks' own seconds."""
    measured = timed_command(command, REPO)
    if measured["exit"] != 0 and "predict_many" not in command:
        raise SystemExit(f"bench.predict_speed: {' '.join(command)} failed:\n"
                         f"{measured['output']}")
    result = {key: measured[key] for key in ("seconds", "cpu_seconds", "peak_rss_mb", "exit")}
    tasks = re.search(r"\((\d+\.\d+) s in tasks\)", measured["output"])
    if tasks:
        result["task_seconds"] = float(tasks.group(1))
    return result


def feature_rows(source: str, rows: int) -> pd.DataFrame:
    """``rows`` real rows (track_id and the 15 features), the table repeated as needed."""
    from stages.common import FEATURES, ID_COLUMN  # noqa: PLC0415

    real = pd.read_csv(source, usecols=[ID_COLUMN, *FEATURES]).dropna()
    repeat = -(-rows // len(real))
    return pd.concat([real] * repeat, ignore_index=True).head(rows)[[ID_COLUMN, *FEATURES]]


def repeat_csv(source: Path, target: Path, rows: int) -> Path:
    """A CSV of ``rows`` data rows: ``source``'s rows repeated (written as text, fast)."""
    lines = source.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    with open(target, "w") as handle:
        handle.write(header)
        left = rows
        while left > 0:
            handle.writelines(body[:left])
            left -= len(body)
    return target


def model_only(model_file: Path, x: np.ndarray) -> float:
    from stages.model_files import load_model, predict_proba  # noqa: PLC0415

    model = load_model(model_file)[0]
    predict_proba(model, x[:2048])  # warm-up: graph tracing, caches
    started = time.perf_counter()
    predict_proba(model, x)
    return len(x) / (time.perf_counter() - started)


def predict_command(model_file: Path, path: Path, out: Path) -> list[str]:
    """predict with every feature of the file: a model that takes missing features would
    otherwise leave out popularity and explicit (the published blend then answers through
    its masked MLP alone, another computation than the model-only one)."""
    return [sys.executable, "-m", "stages.predict", str(model_file), str(path), "-o", str(out),
            "--use-popularity"]


def end_to_end(model_file: Path, path: Path, rows: int, out: Path) -> dict:
    measured = timed(predict_command(model_file, path, out))
    measured["rows_per_s"] = round(rows / measured["seconds"])
    return measured


def families(models_dir: Path, small: Path, big: Path, tmp: Path, x: np.ndarray,
             names: list[str]) -> dict:
    results = {}
    for name in names:
        file = MODELS[name]
        model_file = models_dir / file
        if not model_file.is_file():
            print(f"bench.predict_speed: {model_file} not found: {name} left out", flush=True)
            continue
        entry = {"model_only_rows_per_s": round(model_only(model_file, x))}
        entry["end_to_end"] = end_to_end(model_file, big, len(x), tmp / "out.csv")
        start_up = timed(predict_command(model_file, small, tmp / "out.csv"))
        entry["start_up_s"] = start_up["seconds"]
        net = entry["end_to_end"]["seconds"] - start_up["seconds"]
        entry["end_to_end_without_start_up_rows_per_s"] = round(len(x) / net) if net > 0 else None
        results[name] = entry
        print(f"bench.predict_speed: {name} {entry}", flush=True)
    return results


def big_file(model_file: Path, base: Path, rows: int, tmp: Path, measured_100k: dict) -> dict:
    """End to end on ``rows`` rows (``base`` repeated): rows/s against the same model's on
    100,000 rows, with and without the start-up in both (the start-up is the same fixed
    cost, so without it the comparison is the one that shows what streaming costs)."""
    path = repeat_csv(base, tmp / "big.csv", rows)
    measured = end_to_end(model_file, path, rows, tmp / "big-out.csv")
    written = sum(1 for _ in open(tmp / "big-out.csv")) - 1
    path.unlink()
    (tmp / "big-out.csv").unlink()
    measured.update({"model": model_file.name, "rows": rows, "rows_written": written,
                     "rate_vs_100k": round(measured["rows_per_s"]
                                           / measured_100k["end_to_end"]["rows_per_s"], 3)})
    start_up, net_100k = (measured_100k.get("start_up_s"),
                          measured_100k.get("end_to_end_without_start_up_rows_per_s"))
    if start_up is not None and net_100k:
        net = rows / (measured["seconds"] - start_up)
        measured["rows_per_s_without_start_up"] = round(net)
        measured["rate_vs_100k_without_start_up"] = round(net / net_100k, 3)
    print(f"bench.predict_speed: big file {measured}", flush=True)
    return measured


def dask_against_one_process(model_file: Path, frame: pd.DataFrame, files: int,
                             tmp: Path) -> dict:
    folder = tmp / "many"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
        frame.iloc[part].to_csv(folder / f"part-{i:02d}.csv", index=False)
    loop = ("import sys, pathlib; from stages.predict import Options, predict_file;"
            "opts = Options(use_popularity=True);"
            "m, i, o = map(pathlib.Path, sys.argv[1:]); o.mkdir();"
            "[predict_file(m, p, o / (p.stem + '.csv'), lambda s: None, opts)"
            " for p in sorted(i.iterdir())]")
    one = timed([sys.executable, "-c", loop, str(model_file), str(folder), str(tmp / "one")])
    runs = {}
    # 1 worker of 2 threads: Dask's own cost (cluster start, transfers) apart from the split
    # of the cores into 2 one-thread workers
    for workers in (2, 1):
        runs[workers] = timed([sys.executable, "-m", "stages.predict_many", str(model_file),
                               str(folder), "-o", str(tmp / f"dask{workers}"), "--workers",
                               str(workers), "--use-popularity"])
    same = all((tmp / "one" / p.name).read_bytes() == (tmp / f"dask{w}" / p.name).read_bytes()
               for p in sorted((tmp / "one").iterdir()) for w in runs)
    result = {"model": model_file.name, "files": files, "rows": len(frame),
              "one_process": one, "dask_2_workers": runs[2], "dask_1_worker": runs[1],
              "dask_vs_one_process_time": round(runs[2]["seconds"] / one["seconds"], 3),
              "identical_bytes": same and all(len(list((tmp / f"dask{w}").iterdir())) == files
                                              for w in runs)}
    print(f"bench.predict_speed: dask {result}", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.predict_speed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--big-rows", type=int, default=10_000_000)
    parser.add_argument("--big-model", default="forest", choices=list(MODELS))
    parser.add_argument("--dask-model", default="mlp", choices=list(MODELS))
    parser.add_argument("--dask-files", type=int, default=4)
    parser.add_argument("--dask-rows", type=int, default=400_000,
                        help="rows over the --dask-files files (the cluster's start-up, a few "
                        "seconds, is part of what is timed)")
    parser.add_argument("--families", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="the models to measure (the others keep their saved numbers)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["families", "big", "dask"])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    source = os.environ.get("SPOTIFY_TRACKS_URL")
    if not source:
        raise SystemExit("bench.predict_speed: set SPOTIFY_TRACKS_URL to the real dataset")
    from stages.common import FEATURES  # noqa: PLC0415
    from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415

    quiet_tensorflow()
    out_file = args.out / "predict_speed.json"
    result = json.loads(out_file.read_text()) if out_file.exists() else {}
    command = shown_command("bench.predict_speed", argv or sys.argv[1:])
    result.update({"command": f"{result['command']}; {command}" if result.get("command")
                   else command,
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "note": f"{result['note']}; {args.note}" if result.get("note")
                   and args.note != result["note"] else args.note, "rows": args.rows})
    frame = feature_rows(source, args.rows)
    x = frame[FEATURES].to_numpy("float32")
    with tempfile.TemporaryDirectory(prefix="spotify-genre-predict-speed-") as name:
        tmp = Path(name)
        base = tmp / "rows.csv"
        frame.to_csv(base, index=False)
        frame.head(SMALL_ROWS).to_csv(tmp / "small.csv", index=False)
        if "families" not in args.skip:
            result.setdefault("families", {}).update(
                families(args.models_dir, tmp / "small.csv", base, tmp, x, args.families))
        if "big" not in args.skip:
            result["big_file"] = big_file(args.models_dir / MODELS[args.big_model], base,
                                          args.big_rows, tmp,
                                          result["families"][args.big_model])
        if "dask" not in args.skip:
            result["dask"] = dask_against_one_process(args.models_dir / MODELS[args.dask_model],
                                                      feature_rows(source, args.dask_rows),
                                                      args.dask_files, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
