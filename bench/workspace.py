"""A throwaway copy of the project to run DVC in: used by the benchmark and the tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# What a pipeline run needs from the repository (no data, no outputs, no cache).
PROJECT_FILES = ["stages", "taxonomies", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots",
                 ".dvcignore", ".gitignore"]
GIT = ["git", "-c", "user.name=spotify-genre", "-c", "user.email=bench@example.invalid"]


def shown_command(module: str, argv: list[str]) -> str:
    """The command line as a result file records it: absolute paths, which name the machine
    that ran it, become relative to the working directory, or <path> outside it."""
    def shown(arg: str) -> str:
        if not os.path.isabs(arg):
            return arg
        try:
            return os.path.relpath(arg) if Path(arg).resolve().is_relative_to(Path.cwd()) \
                else "<path>"
        except ValueError:
            return "<path>"

    return " ".join(["python -m", module, *(shown(a) for a in argv)])


def run(args: list[str], cwd: Path, env_extra: dict | None = None,
        timeout: float = 3600, capture: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's bin dir first on PATH (dvc, python).

    ``capture=False`` for commands that leave a daemon behind (`dvc queue start`): it
    would inherit the output pipes, and reading them would wait for the daemon to exit.
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(cwd)
    env.update(env_extra or {})
    if not capture:
        return subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_checked(args: list[str], cwd: Path, env_extra: dict | None = None, **kwargs) -> str:
    result = run(args, cwd, env_extra, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


# Runs the command given in argv in a child and reports, after its output, its exit code,
# wall seconds, the peak RSS of its process tree's largest process (KB) and its CPU time
# (user + system of the whole tree: on shared cores less swollen by other load than the wall).
PROBE = (
    "import resource, subprocess, sys, time;"
    "t = time.perf_counter();"
    "r = subprocess.run(sys.argv[1:]);"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN);"
    "print('BENCH', r.returncode, time.perf_counter() - t, u.ru_maxrss, u.ru_utime + u.ru_stime,"
    " flush=True)"
)


def timed_command(args: list[str], cwd: Path, env_extra: dict | None = None) -> dict:
    """Run ``args`` under PROBE: {exit, seconds, cpu_seconds, peak_rss_mb, output}."""
    result = run([sys.executable, "-c", PROBE, *args], cwd, env_extra)
    lines = [x for x in result.stdout.splitlines() if x.startswith("BENCH ")]
    if not lines:
        raise RuntimeError(f"{' '.join(args)}: no timing\n{result.stdout}\n{result.stderr}")
    _, code, seconds, rss_kb, cpu = lines[-1].split()
    return {"exit": int(code), "seconds": round(float(seconds), 2),
            "cpu_seconds": round(float(cpu), 1), "peak_rss_mb": round(int(rss_kb) / 1024),
            "output": f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"}


# sitecustomize.py for every Python process of one `dvc repro` (on PYTHONPATH): at exit a
# process appends its command line, wall seconds since it started, CPU seconds (its own and
# its children's) and peak RSS to $BENCH_STAGE_LOG. So the whole pipeline runs as the
# README's `dvc repro` does, once, and each stage's process is still measured.
STAGE_PROBE = """\
import atexit, json, os, resource, sys, time

_started = time.perf_counter()


def _record():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.environ["BENCH_STAGE_LOG"], "a") as log:
        log.write(json.dumps({
            "argv": sys.orig_argv[1:], "seconds": time.perf_counter() - _started,
            "cpu_seconds": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
            "peak_rss_kb": max(own.ru_maxrss, children.ru_maxrss)}) + "\\n")


if os.environ.get("BENCH_STAGE_LOG"):
    atexit.register(_record)
"""


def stage_commands(repo: Path) -> dict[str, list[str]]:
    """Each stage's command after its interpreter (``-m stages.train mlp``), in file order."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {name: str(stage["cmd"]).split()[1:] for name, stage in stages.items()}


def timed_repro(repo: Path, env: dict, bench: str = "bench") -> tuple[dict, dict]:
    """One whole ``dvc repro``, as the README runs it: (the whole run's wall seconds, CPU
    seconds and peak RSS; each stage's process: the same three, dvc's own work between
    stages not included). A failed run stops the benchmark with its output."""
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as probe:
        (Path(probe) / "sitecustomize.py").write_text(STAGE_PROBE)
        log = Path(probe) / "stages.jsonl"
        paths = [probe, *filter(None, [os.environ.get("PYTHONPATH")])]
        measured = timed_command(["dvc", "repro"], repo, {
            **env, "PYTHONPATH": os.pathsep.join(paths), "BENCH_STAGE_LOG": str(log)})
        if measured["exit"] != 0:
            raise SystemExit(f"{bench}: dvc repro failed:\n{measured['output']}")
        records = [json.loads(line) for line in log.read_text().splitlines()] \
            if log.exists() else []
    stages = {}
    for name, command in stage_commands(repo).items():
        found = [r for r in records if r["argv"] == command]
        if found:  # a stage dvc skipped (its outputs already there) has no process
            stages[name] = {"seconds": round(found[-1]["seconds"], 1),
                            "cpu_seconds": round(found[-1]["cpu_seconds"], 1),
                            "peak_rss_mb": round(found[-1]["peak_rss_kb"] / 1024)}
    whole = {"seconds": round(measured["seconds"], 1), "cpu_seconds": measured["cpu_seconds"],
             "peak_rss_mb": measured["peak_rss_mb"]}
    return whole, stages


def pipeline_stages(repo: Path) -> list[str]:
    """The stages of repo/dvc.yaml, in file order (which is a valid run order)."""
    return list(stage_commands(repo))


def timed_stage(repo: Path, stage: str, env: dict, bench: str = "bench") -> dict:
    """``dvc repro -s STAGE`` (dvc's own start-up, about 2 s, included): wall seconds, CPU
    seconds and peak RSS; a failed stage stops the benchmark with its output."""
    measured = timed_command(["dvc", "repro", "-s", stage], repo, env)
    if measured["exit"] != 0:
        raise SystemExit(f"{bench}: stage {stage} failed:\n{measured['output']}")
    return {"seconds": round(measured["seconds"], 1), "cpu_seconds": measured["cpu_seconds"],
            "peak_rss_mb": measured["peak_rss_mb"]}


def commit_all(repo: Path, message: str) -> None:
    run_checked([*GIT, "add", "-A"], repo)
    run_checked([*GIT, "commit", "-qm", message], repo)


def copy_project(source: Path, dest: Path) -> Path:
    """A fresh git + DVC checkout of the project code in ``dest``, committed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src, target = source / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, target)
    run_checked(["git", "init", "-q"], dest)
    commit_all(dest, "init")
    return dest


def set_params(repo: Path, changes: dict[str, dict]) -> None:
    """Update sections of repo/params.yaml in place."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def set_param(repo: Path, dotted: str, value: str) -> None:
    """``section.key=value`` as `dvc exp run -S` reads it (value parsed as YAML)."""
    section, key = dotted.split(".", 1)
    set_params(repo, {section: {key: yaml.safe_load(value)}})
