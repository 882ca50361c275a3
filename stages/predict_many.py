"""Label every file of a directory on a Dask cluster: one task per file, each predicted by
predict's own code path (``stages.predict.predict_file``), so every output holds the bytes
``python -m stages.predict MODEL FILE -o OUT`` writes for that file.

    python -m stages.predict_many MODEL INPUT_DIR -o OUT_DIR [-k 3] [--level K]
        [--use-popularity] [--decimal ,] [--column SOURCE=FEATURE ...]
        [--scheduler local | tcp://HOST:8786] [--workers 2]

INPUT_DIR: its .csv, .tsv, .txt, .json, .jsonl, .parquet and .pq files (not its
subdirectories); OUT_DIR/NAME.csv is written for input NAME.EXT. ``--scheduler local``
(the default) starts a LocalCluster of ``--workers`` processes, one thread each, that share
the cores between them (TensorFlow's and the BLAS pools capped at cores / workers);
``--scheduler tcp://HOST:8786`` uses a running ``dask scheduler`` and its workers, which
must see INPUT_DIR and OUT_DIR at the same paths (a shared filesystem); the model file is
sent to them with the tasks, so it need not be shared.

Why a task per file and not per ``dask.dataframe`` partition: predict reports a bad row by
its line in the file and calls the model on groups of rows fixed by their position in the
file; a task that reads its whole file keeps both. A large input is split into many files
(what a Parquet dataset or ``split -l`` gives) to spread it over the workers.

A file that fails (unreadable, no usable row, a missing column) is reported by name with
predict's own error line and leaves no output; the other files still finish, and the exit
status is 2 when any file failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from stages.common import UserError, cli, threads
from stages.inputs import DEFAULT_CHUNK_ROWS, parse_renames
from stages.predict import Options, model_path, predict_file

SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".jsonl", ".parquet", ".pq")
UNSET_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"  # None: not set


@dataclass
class FileResult:
    """What one task did: its input's name, rows written, messages said, or its error."""

    name: str
    rows: int = 0
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def input_files(directory: Path) -> list[Path]:
    """The input files of ``directory``, sorted by name; one error line when there are none
    or when two would write the same output."""
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory")
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES)
    if not files:
        raise UserError(f"{directory}: no input files ({', '.join(SUFFIXES)})")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise UserError(f"{directory}: {seen[path.stem].name} and {path.name} would both "
                            f"write {path.stem}.csv: rename one")
        seen[path.stem] = path
    return files


def output_path(out_dir: Path, input_path: Path) -> Path:
    return out_dir / f"{input_path.stem}.csv"


def predict_one(model: "ModelBytes | Path", input_path: Path, output: Path,
                options: Options) -> FileResult:
    """One task: predict one file with predict's code path. Never raises for a bad file:
    its error comes back in the result (so the other tasks go on)."""
    started = time.perf_counter()
    result = FileResult(input_path.name)
    try:
        model_file = model.local_file() if isinstance(model, ModelBytes) else model
        result.rows = predict_file(model_file, input_path, output, result.messages.append,
                                   options)
    except UserError as exc:
        result.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported by file name, the others go on
        result.error = f"{input_path}: {type(exc).__name__}: {exc}"
    result.seconds = round(time.perf_counter() - started, 3)
    return result


@dataclass(frozen=True)
class ModelBytes:
    """A model file's bytes, sent to the workers (no shared filesystem needed for the
    model); each worker writes it once to its temp dir, named by its content hash."""

    name: str
    data: bytes

    def local_file(self) -> Path:
        digest = hashlib.sha256(self.data).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / "spotify-genre-models" / digest / self.name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(self.data)
            os.replace(tmp, path)
        return path


@contextlib.contextmanager
def connect(scheduler: str, workers: int) -> Iterator:
    """A dask.distributed Client: on a LocalCluster for "local", else on the scheduler at
    that address; both closed on the way out."""
    import dask  # noqa: PLC0415
    from dask.distributed import Client, LocalCluster  # noqa: PLC0415

    if scheduler == "local":
        per_worker = str(max(1, threads() // workers))
        env = {"SPOTIFY_GENRE_THREADS": per_worker, "OMP_NUM_THREADS": per_worker,
               "OPENBLAS_NUM_THREADS": per_worker, "MKL_NUM_THREADS": per_worker}
        # Dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536, which hands every freed
        # block back to the kernel: predict's per-chunk arrays then fault their pages in
        # again each time (measured, one process, 100,000 rows, the LSTM: 3 s more wall and
        # 5.5 s more system time, 14.2 s against 11.2 s). Workers start without it here.
        with dask.config.set({UNSET_TRIM: None}), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=None, env=env) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"--scheduler {scheduler}: cannot reach the scheduler ({exc})") from None
    with client:
        yield client


def run_files(client, model_file: Path, files: list[Path], out_dir: Path, options: Options,
              say=print) -> list[FileResult]:
    """Submit one task per file; say each file's messages (prefixed by its path) as it
    finishes; the results in file order."""
    from dask.distributed import as_completed  # noqa: PLC0415

    model = client.scatter(ModelBytes(model_file.name, model_file.read_bytes()),
                           broadcast=True)
    futures = {client.submit(predict_one, model, path, output_path(out_dir, path), options,
                             pure=False, key=f"predict-{i}-{path.name}"): path
               for i, path in enumerate(files)}
    results: dict[Path, FileResult] = {}
    for future in as_completed(futures):
        path = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - a worker lost, say: that file failed
            result = FileResult(path.name, error=f"{path}: task failed ({type(exc).__name__}: "
                                                 f"{exc})")
        for message in result.messages:
            say(f"{path}: {message}")
        if result.error:
            say(f"error: {result.error}")
        results[path] = result
    return [results[path] for path in files]


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict_many",
        description="Label every file of a directory with a trained model, on a Dask cluster.")
    parser.add_argument("model", help="as for python -m stages.predict")
    parser.add_argument("input_dir", type=Path, help="directory of CSV, JSON or Parquet files")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR",
                        help="directory for one NAME.csv per input NAME.EXT")
    parser.add_argument("-k", type=int, default=3, help="how many genres per track (default 3)")
    parser.add_argument("--decimal", choices=[".", ","], default=".")
    parser.add_argument("--column", action="append", metavar="SOURCE=FEATURE")
    parser.add_argument("--level", type=int, metavar="K")
    parser.add_argument("--use-popularity", action="store_true")
    parser.add_argument("--scheduler", default="local",
                        help="local (a LocalCluster here, the default) or a scheduler address "
                        "such as tcp://HOST:8786")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of the local cluster (default 2)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.k < 1:
        raise UserError(f"-k {args.k}: must be >= 1")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be >= 1")
    options = Options(k=args.k, decimal=args.decimal, renames=parse_renames(args.column),
                      chunk_rows=args.chunk_rows, level=args.level,
                      use_popularity=args.use_popularity)
    model_file = model_path(args.model)
    if not model_file.is_file():
        raise UserError(f"{model_file}: model file not found (train it: dvc repro, or get it: "
                        "dvc pull)")
    files = [p.resolve() for p in input_files(args.input_dir)]
    out_dir = args.output.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    with connect(args.scheduler, args.workers) as client:
        results = run_files(client, model_file, files, out_dir, options, say)
    failed = [r.name for r in results if r.error]
    rows = sum(r.rows for r in results)
    # the tasks' own time beside the wall: what the cluster itself (start, transfers) costs
    say(f"predict_many: {len(results) - len(failed)} of {len(results)} files, {rows} rows -> "
        f"{args.output} in {time.perf_counter() - started:.1f} s "
        f"({sum(r.seconds for r in results):.1f} s in tasks)"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    main()
