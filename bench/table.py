"""One table of every family in every experiment: ``python -m bench.table [NAME ...]``.

``python -m bench.table --summary`` prints instead the README's short table: the
published model, each family, the published model folded to 66 classes, and the
ceiling, from HEAD's committed metrics/test.json and reports, beside the study's
reported accuracies (constants below, labelled as the study's) and the chance line.

Reads what each run committed, not a second scoring: for the workspace's HEAD and each
DVC experiment (git refs under refs/exps, or only the NAMEs given) it takes
params.yaml, reports/evaluate.json and reports/train/*.json from that revision and
prints, per family (and the blend), the split strategy, the classes (merge strategy and
count), the feature set, test accuracy, its difference from the best single family
(chosen on validation) with the 95% paired-bootstrap interval over test recordings,
top-5, macro-F1, any-genre accuracy and training wall time, beside the test set's
chance line. Markdown, ready for the README.

Run the experiments first, e.g.
``dvc exp run -n group-66 -S split.strategy=group -S merge_genres.strategy=study``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import yaml

from bench.workspace import run_checked

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("run", "split", "classes", "features", "family", "accuracy", "vs best (95% CI)",
           "top-5", "macro-F1", "any-genre", "train s", "chance")


def git(*args: str, repo: Path = REPO) -> str:
    return run_checked(["git", *args], repo)


def experiments(repo: Path = REPO) -> dict[str, str]:
    """{experiment name: commit} for every DVC experiment in ``repo``."""
    refs = git("for-each-ref", "refs/exps", "--format=%(refname) %(objectname)",
               repo=repo).split()
    # finished experiments live at refs/exps/<baseline sha, split 2/38>/<name>; the
    # queue's stash and run refs sit elsewhere under refs/exps
    return {ref.rsplit("/", 1)[-1]: sha for ref, sha in zip(refs[::2], refs[1::2])
            if len(ref.split("/")) == 5 and len(ref.split("/")[2]) == 2}


def show(rev: str, path: str, repo: Path = REPO) -> str | None:
    try:
        return git("show", f"{rev}:{path}", repo=repo)
    except RuntimeError:  # run_checked: the path is not in that revision
        return None


def difference_cell(family: str, comparison: dict | None) -> str | None:
    """'+0.0120 [+0.0040, +0.0200]' against the reference family; 'best on val' for it."""
    if not comparison:
        return None  # a run from before evaluate measured it
    if family == comparison["reference"]:
        return "best on val"
    gap = comparison["models"].get(family)
    if not gap or gap.get("difference") is None:
        return None
    return f"{gap['difference']:+.4f} [{gap['low']:+.4f}, {gap['high']:+.4f}]"


def rows_of(name: str, rev: str, repo: Path = REPO) -> list[dict]:
    """One row per family scored at ``rev`` (none if that run has no evaluate report)."""
    report = show(rev, "reports/evaluate.json", repo)
    if report is None:
        return []
    report = json.loads(report)
    params = yaml.safe_load(show(rev, "params.yaml", repo))
    merge = params.get("merge_genres", {})
    strategy = merge.get("strategy", "study" if merge.get("enabled") else "none")
    merged = strategy != "none"
    if strategy == "learned":
        strategy = f"learned ≤{merge.get('max_group_size')}"
    # runs from before merge_genres.train_on retrained on the merged classes
    if merged and merge.get("train_on", "classes") == "genres":
        strategy += ", summed"  # the genre models' probabilities summed per class
    classes = f"{report['test_set']['classes']} ({strategy})"
    rows = []
    for family, scores in report["families"].items():
        train = show(rev, f"reports/train/{family}.json", repo)
        seconds = json.loads(train)["train_seconds"] if train else None
        rows.append({
            "run": name, "split": params["split"]["strategy"], "classes": classes,
            "features": params.get("features", "all"), "family": family,
            "accuracy": scores["accuracy"],
            "vs best (95% CI)": difference_cell(family, report.get("comparison")),
            "top-5": scores["top5"],
            "macro-F1": scores["macro_f1"], "any-genre": scores["any_genre_accuracy"],
            "train s": seconds, "chance": report["test_set"]["chance"],
        })
    return rows


def markdown(rows: list[dict], columns=COLUMNS, digits: int = 4) -> str:
    def cell(value):
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) and value < 1 else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# What the study reported (test accuracy, its random row split, ~1000 epochs): not measured
# here, shown beside ours. It trained no trees.
STUDY_ACCURACY = {"softmax": "0.15", "mlp": "0.25–0.32", "lstm": "0.32"}
STUDY_ACCURACY_66 = "0.408"  # after its hand-made 114 -> 66 merge (taxonomies/study.yaml)
SUMMARY_COLUMNS = ("model", "classes", "accuracy", "top-5", "macro-F1", "calibration error",
                   "the study's accuracy", "chance", "train s")
MISSING_COLUMNS = ("missing features", "features left", "test accuracy", "vs every feature")
CALIBRATION_COLUMNS = ("model", "temperature", "val error before", "val error after",
                       "test error")


def committed_json(rev: str, path: str, repo: Path = REPO) -> dict:
    text = show(rev, path, repo)
    if text is None:
        raise SystemExit(f"error: {rev}: {path} is not committed (run dvc repro, commit)")
    return json.loads(text)


def missing_rows(rev: str = "HEAD", repo: Path = REPO) -> list[dict]:
    """The published model's test accuracy with features missing (reports/published.json)."""
    published = committed_json(rev, "reports/published.json", repo)
    accuracy = published.get("missing_feature_accuracy")
    if not accuracy:
        raise SystemExit(f"error: {rev}: the published model ({published['model']}) does not "
                         "take missing features")
    full = accuracy[""]
    return [{"missing features": ", ".join(key.split(",")) if key else "none",
             "features left": len(published["features"]) - len(key.split(",") if key else []),
             "test accuracy": value, "vs every feature": f"{value - full:+.4f}"}
            for key, value in accuracy.items()]


def group_rows(level: int, rev: str = "HEAD", repo: Path = REPO) -> list[dict]:
    """The learned hierarchy's classes at ``level`` (reports/taxonomy.json), largest first."""
    from stages.taxonomy import level_fold  # noqa: PLC0415

    hierarchy = committed_json(rev, "reports/taxonomy.json", repo)
    genres = hierarchy["genres"]
    names, fold = level_fold(hierarchy, genres, level)
    groups = [[g for g, row in zip(genres, fold) if row[i]] for i in range(len(names))]
    groups.sort(key=lambda members: (-len(members), members))
    return [{"class": i + 1, "genres": len(members), "members": ", ".join(members)}
            for i, members in enumerate(groups)]


def calibration_rows(rev: str = "HEAD", repo: Path = REPO) -> list[dict]:
    """Per model: the validation temperature, calibration error before and after, test error."""
    metrics = committed_json(rev, "metrics/test.json", repo)
    rows = []
    for model, scores in metrics.items():
        if not isinstance(scores, dict):
            continue
        path = "reports/blend.json" if model == "blend" else f"reports/train/{model}.json"
        train = json.loads(show(rev, path, repo) or "{}")
        rows.append({"model": model, "temperature": train.get("temperature"),
                     "val error before": train.get("val_ece_raw"),
                     "val error after": train.get("val_ece"), "test error": scores.get("ece")})
    return rows


def summary_rows(rev: str = "HEAD", repo: Path = REPO) -> list[dict]:
    """The README's table, from ``rev``'s committed metrics/test.json and reports."""
    metrics = committed_json(rev, "metrics/test.json", repo)
    published = committed_json(rev, "reports/published.json", repo)
    classes, chance = published["classes"], metrics["chance"]

    def family_row(model: str, family: str) -> dict:
        train = show(rev, f"reports/train/{family}.json", repo)
        study = (STUDY_ACCURACY.get(family, "- (no trees)" if family in ("forest", "boosting")
                                    else "-") if classes == 114 else None)
        return {"model": model, "classes": classes, "accuracy": metrics[family]["accuracy"],
                "top-5": metrics[family]["top5"], "macro-F1": metrics[family]["macro_f1"],
                "calibration error": metrics[family].get("ece"),
                "the study's accuracy": study, "chance": chance,
                "train s": json.loads(train)["train_seconds"] if train else None}

    model = published["model"]
    rows = [family_row(f"**genre-classifier** (published: {model})", model)]
    rows += [family_row(family, family) for family, scores in metrics.items()
             if isinstance(scores, dict)]
    folded = published["accuracy_by_classes"]  # the published model's output, summed per class
    for taxonomy, label, study in (("study", "the study's merge", STUDY_ACCURACY_66),
                                   ("learned", "the learned taxonomy", None)):
        at_66 = [level for level in folded.get(taxonomy, []) if level["classes"] == 66]
        if at_66:
            rows.append({"model": f"genre-classifier folded to {label} (no retraining)",
                         "classes": 66, "accuracy": at_66[0]["accuracy"], "top-5": None,
                         "macro-F1": at_66[0]["macro_f1"], "calibration error": None,
                         "the study's accuracy": study,
                         "chance": at_66[0]["chance"], "train s": None})
    rows.append({"model": "ceiling: the best any model can score (identical inputs, other "
                 "genres)", "classes": classes, "accuracy": metrics["ceiling"], "top-5": None,
                 "macro-F1": None, "calibration error": None, "the study's accuracy": None,
                 "chance": chance,
                 "train s": None})
    return rows


RESULTS_DIR = REPO / "bench" / "results"


def _millions(rows) -> str:
    return "-" if rows is None else f"{rows / 1e6:,.1f} M"


def scale_rows(path: Path = RESULTS_DIR / "scale.json") -> list[dict]:
    """bench.scale's committed measurements: per stage, its wall time, CPU time and peak RSS
    at each measured size (a size cut short shows the stages it reached), the fitted growth
    exponents and the extrapolated walls."""
    from bench.scale import measured_sizes  # noqa: PLC0415

    result = json.loads(path.read_text())
    walls = result.get("extrapolated", {})
    sizes = measured_sizes(result)
    rows = []
    for stage in sizes[0]["stages"]:
        row = {"stage": stage}
        for size in sizes:
            name = f"{size['factor']}x{'' if size.get('complete', True) else ' (cut short)'}"
            measured = size["stages"].get(stage)
            row[f"{name}: wall s / CPU s / MB"] = "-" if measured is None else (
                f"{measured['seconds']:g} / {measured.get('cpu_seconds', '-')} / "
                f"{measured['peak_rss_mb']}")
        wall = walls.get(stage, {})
        row.update({"wall exponent": wall.get("time_exponent"),
                    "CPU exponent": wall.get("cpu_exponent"),
                    "RSS exponent": wall.get("rss_exponent"),
                    "rows at 8 h (extrapolated)": _millions(wall.get("rows_at_time_wall")),
                    "rows at 24 GB (extrapolated)": _millions(wall.get("rows_at_memory_wall"))})
        rows.append(row)
    return rows


def scale_columns(rows: list[dict]) -> tuple[str, ...]:
    return tuple(rows[0]) if rows else ("stage",)


def predict_speed_rows(path: Path = RESULTS_DIR / "predict_speed.json") -> list[dict]:
    """bench.predict_speed's committed measurements, one row per model file."""
    result = json.loads(path.read_text())
    rows = []
    for name, entry in result.get("families", {}).items():
        e2e = entry["end_to_end"]
        rows.append({"model": name, "model-only rows/s": f"{entry['model_only_rows_per_s']:,}",
                     f"end-to-end rows/s ({result['rows']:,} rows)": f"{e2e['rows_per_s']:,}",
                     "start-up s": entry["start_up_s"],
                     "without start-up rows/s": (f"{entry['end_to_end_without_start_up_rows_per_s']:,}"
                                                 if entry["end_to_end_without_start_up_rows_per_s"]
                                                 else None),
                     "peak RSS MB": e2e["peak_rss_mb"]})
    return rows


def seeds_rows(path: Path = RESULTS_DIR / "seeds.json") -> list[dict]:
    """bench.seeds' committed measurements: per network family, test accuracy per seed and
    its spread."""
    result = json.loads(path.read_text())
    rows = []
    for family, entry in result["families"].items():
        test = entry["test"]
        rows.append({"family": family,
                     "test accuracy per seed": ", ".join(
                         f"{r['test_accuracy']:.4f} ({r['seed']})" for r in entry["runs"]),
                     "mean": f"{test['mean']:.4f}",
                     "std": f"{test['std']:.4f}" if test["std"] is not None else None,
                     "range": f"{(test['max'] - test['min']) * 100:.2f} points"})
    return rows


GENERATED = re.compile(r"(<!-- (python -m bench\.table [^>]*?) -->)(.*?)(<!-- end of \2 -->)", re.S)


def update_docs(repo: Path = REPO) -> list[str]:
    """Rewrite every generated table in README.md and docs/*.md (between
    ``<!-- python -m bench.table ARGS -->`` and its end marker) with what that command
    prints now; the pages changed."""
    changed = []
    for page in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        text = page.read_text()

        def fresh(match: re.Match) -> str:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                main(shlex.split(match.group(2))[3:])
            return f"{match.group(1)}\n{out.getvalue().strip()}\n{match.group(4)}"

        new = GENERATED.sub(fresh, text)
        if new != text:
            page.write_text(new)
            changed.append(str(page.relative_to(repo)))
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*",
                        help="experiments (or HEAD) to show (default: all, and HEAD)")
    parser.add_argument("--summary", action="store_true",
                        help="the README's short table of HEAD's committed results instead")
    parser.add_argument("--missing", action="store_true",
                        help="the published model's test accuracy with features missing")
    parser.add_argument("--calibration", action="store_true",
                        help="each model's temperature and calibration error")
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite every generated table in README.md and docs/")
    parser.add_argument("--scale", action="store_true",
                        help="bench.scale's committed table (bench/results/scale.json)")
    parser.add_argument("--predict-speed", action="store_true",
                        help="bench.predict_speed's committed table")
    parser.add_argument("--seeds", action="store_true",
                        help="bench.seeds' committed table (each network at several seeds)")
    parser.add_argument("--groups", type=int, metavar="K",
                        help="the learned genre hierarchy's classes at K classes")
    args = parser.parse_args(argv)
    if args.update_docs:
        print("\n".join(update_docs()) or "every generated table is up to date")
        return
    if args.groups:
        print(markdown(group_rows(args.groups), ("class", "genres", "members")))
        return
    if args.scale:
        rows = scale_rows()
        print(markdown(rows, scale_columns(rows), digits=2))
        return
    if args.seeds:
        rows = seeds_rows()
        print(markdown(rows, scale_columns(rows), digits=4))
        return
    if args.predict_speed:
        rows = predict_speed_rows()
        print(markdown(rows, scale_columns(rows), digits=2))
        return
    tables = {"summary": (summary_rows, SUMMARY_COLUMNS, 3),
              "missing": (missing_rows, MISSING_COLUMNS, 4),
              "calibration": (calibration_rows, CALIBRATION_COLUMNS, 4)}
    for name, (rows_for, columns, digits) in tables.items():
        if getattr(args, name):
            if args.names:
                parser.error(f"--{name} reads HEAD only: name no experiments")
            print(markdown(rows_for(), columns, digits=digits))
            return
    found = {**experiments(), "HEAD": "HEAD"}
    missing = [n for n in args.names if n not in found]
    if missing:
        raise SystemExit(f"error: no experiment named {', '.join(missing)} "
                         f"(have: {', '.join(sorted(found)) or 'none'})")
    runs = {n: found[n] for n in args.names} if args.names else found
    rows = [row for name, rev in runs.items() for row in rows_of(name, rev)]
    splits = {"recording": 0, "group": 1, "random": 2}  # the default first, then the leakier
    rows.sort(key=lambda r: (r["features"], splits.get(r["split"], 3), r["classes"], r["run"],
                             r["family"]))
    print(markdown(rows))


if __name__ == "__main__":
    main()
