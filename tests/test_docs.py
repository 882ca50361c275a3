"""The README and docs/ say what runs: their commands, tables and links are checked here.

- the README's two set-up commands are the ones .ci/run runs;
- every `dvc exp run` command in README.md and docs/*.md is applied to params.yaml the way
  DVC applies `-S`, validated by stages.params, and each model family it changes is built
  and trained for one epoch on synthetic data, so a default change that breaks a recipe
  fails here;
- the README's results table is what `python -m bench.table --summary` prints;
- every relative link resolves to a file and, where it names one, a heading.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from stages.common import FEATURE_SETS
from stages.params import (
    NETWORKS,
    SECTIONS,
    TREES,
    load_feature_set,
    load_final_fit,
    load_model_name,
    load_section,
    read_params_file,
)
from tests.conftest import REPO, make_tracks

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`]+)`")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# --- the README's set-up commands ---------------------------------------------------------

def test_the_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    blocks = [b.strip() for b in FENCE.findall(readme)]
    pipeline, tests = blocks[0], blocks[1]
    ci_lines = [line for line in (REPO / ".ci/run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert tests == ci_lines[-1]  # .ci/run ends with the README's test command, verbatim
    setup = "python3 -m venv .venv && . .venv/bin/activate && pip install "
    assert pipeline == setup + "-r requirements.txt && dvc repro"
    assert tests == setup + "-q -r requirements-dev.txt && python -m pytest"


def test_the_readme_fits_in_a_screenful_or_two_and_every_docs_page_exists():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages >= {"results.md", "pipeline.md", "data.md", "params.md", "experiments.md",
                     "taxonomy.md", "predicting.md", "models.md", "faults.md", "testing.md"}


# --- the results table ---------------------------------------------------------------------

def test_the_readme_results_table_is_bench_table_summary():
    from bench import table

    try:
        rows = table.summary_rows("HEAD")
    except (RuntimeError, SystemExit, FileNotFoundError) as exc:  # no git, or no committed run
        pytest.skip(f"HEAD's committed reports are not readable here: {exc}")
    expected = table.markdown(rows, table.SUMMARY_COLUMNS, digits=3)
    readme = (REPO / "README.md").read_text()
    marker = "<!-- python -m bench.table --summary -->\n"
    assert marker in readme, "the README's table lost the command that produced it"
    shown = readme.split(marker, 1)[1].split("\n<!-- end of", 1)[0].strip()
    assert shown == expected, "README table differs from `python -m bench.table --summary`"
    assert len(rows) <= 10


GENERATED = re.compile(r"<!-- (python -m bench\.table [^>]*?) -->(.*?)<!-- end of \1 -->", re.S)


def test_every_generated_table_in_the_docs_is_its_command_s_output(capsys):
    """Each table between `<!-- python -m bench.table ARGS -->` and its end marker is what
    that command prints from HEAD's committed reports: the numbers cannot drift."""
    import shlex

    from bench import table

    blocks = [(page, command, shown) for page in PAGES
              for command, shown in GENERATED.findall(page.read_text())]
    assert len(blocks) >= 4, "the generated tables lost their markers"
    for page, command, shown in blocks:
        try:
            table.main(shlex.split(command)[3:])
        except (RuntimeError, SystemExit, FileNotFoundError) as exc:
            pytest.skip(f"HEAD's committed reports are not readable here: {exc}")
        assert shown.strip() == capsys.readouterr().out.strip(), f"{page.name}: {command}"


def test_the_head_rows_of_the_full_results_table_are_bench_tables():
    """docs/results.md's HEAD rows are `python -m bench.table HEAD` (the experiments' rows
    come from runs that live in one machine's DVC experiment refs)."""
    from bench import table

    try:
        rows = table.rows_of("HEAD", "HEAD")
    except (RuntimeError, FileNotFoundError) as exc:
        pytest.skip(f"HEAD's committed reports are not readable here: {exc}")
    rows.sort(key=lambda r: r["family"])
    expected = table.markdown(rows).splitlines()[2:]
    shown = [line for line in (REPO / "docs/results.md").read_text().splitlines()
             if line.startswith("| HEAD |")]
    assert shown == expected


# --- every `dvc exp run` command ----------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    where: str  # file:line
    args: tuple[str, ...]  # after `dvc exp run`

    @property
    def overrides(self) -> list[tuple[str, str]]:
        return [tuple(value.split("=", 1)) for value in _options(self.args)["set"]]

    @property
    def targets(self) -> list[str]:
        return _options(self.args)["targets"]


VALUE_OPTIONS = {"-S": "set", "--set-param": "set", "-n": "name", "--name": "name"}
FLAGS = {"--queue", "--temp", "-f", "--force"}


def _options(args) -> dict:
    found = {"set": [], "name": [], "targets": []}
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg in VALUE_OPTIONS:
            found[VALUE_OPTIONS[arg]].append(args.pop(0))
        elif arg.startswith("-") and arg not in FLAGS:
            raise AssertionError(f"unknown `dvc exp run` option in the docs: {arg}")
        elif not arg.startswith("-"):
            found["targets"].append(arg)
    return found


def _command_args(text: str) -> tuple[str, ...] | None:
    words = shlex.split(text.replace("\n", " "), comments=True)
    for i in range(len(words) - 2):
        if words[i:i + 3] == ["dvc", "exp", "run"]:
            return tuple(words[i + 3:])
    return None


def collect_recipes(pages=PAGES) -> list[Recipe]:
    """Every `dvc exp run` in a code block (one per line) or inline code span, except in a
    quoted error message (`error: …`), which names a command with placeholders."""
    recipes = []
    for page in pages:
        text = page.read_text()
        for block in FENCE.finditer(text):
            first_line = text.count("\n", 0, block.start(1)) + 1
            for offset, line in enumerate(block.group(1).splitlines()):
                if "dvc exp run" in line and not line.startswith(MESSAGE):
                    args = _command_args(line.removeprefix("$ "))
                    recipes.append(Recipe(f"{rel(page)}:{first_line + offset}", args))
        outside = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in INLINE_CODE.finditer(outside):
            code = span.group(1)
            # a bare `dvc exp run` in prose names the command; it is no recipe
            if "dvc exp run" in code and code != "dvc exp run" and not code.startswith(MESSAGE):
                line = outside.count("\n", 0, span.start()) + 1
                recipes.append(Recipe(f"{rel(page)}:{line}", _command_args(code)))
    return recipes


MESSAGE = ("error:", "fetch:")  # what a stage prints, not what a user types


RECIPES = collect_recipes()


def test_the_docs_show_recipes_for_the_study_and_the_experiments():
    changed = {key for recipe in RECIPES for key, _ in recipe.overrides}
    assert {"mlp.hidden", "lstm.variant", "softmax.inputs", "merge_genres.strategy",
            "split.strategy", "features", "model"} <= changed
    assert len(RECIPES) >= 20


def apply_overrides(params: dict, overrides) -> dict:
    """`-S key=value` as DVC applies it: the value parsed as YAML, the key must exist."""
    params = yaml.safe_load(yaml.safe_dump(params))  # a deep copy
    for key, value in overrides:
        *sections, name = key.split(".")
        node = params
        for section in sections:
            assert isinstance(node.get(section), dict), f"-S {key}: no section {section!r}"
            node = node[section]
        assert name in node, f"-S {key}: no such param in params.yaml (DVC refuses it)"
        node[name] = yaml.safe_load(value)
    return params


def validated(params: dict, tmp_path: Path) -> dict:
    """Every section through stages.params, as the stages read them."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    loaded = {section: load_section(section, path) for section in SECTIONS}
    loaded["model"] = load_model_name(path)
    loaded["features"] = load_feature_set(path)
    loaded["final_fit"] = load_final_fit(path)
    return loaded


def stages_of_dvc_yaml() -> set[str]:
    return set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


@pytest.fixture(scope="module")
def frames():
    from stages.split import clean

    frame, _ = clean(make_tracks(rows_per_genre=30))
    frame["label"] = frame["track_genre"]
    classes = sorted(frame["label"].unique())
    return frame.iloc[::2].reset_index(drop=True), frame.iloc[1::2].reset_index(drop=True), classes


TRAINED: dict[str, object] = {}  # one training per distinct (family, params, features)


def tiny_budget(family: str, params):
    """The recipe's settings, with one epoch (or a handful of trees): this checks that the
    model builds and trains, not how well."""
    if family in NETWORKS:
        return params.model_copy(update={"epochs": 1})
    if family == "forest":
        return params.model_copy(update={"n_estimators": min(params.n_estimators, 5)})
    return params.model_copy(update={"max_rounds": min(params.max_rounds, 3)})


def train_family(family: str, params, features: list[str], frames):
    key = f"{family} {params!r} {features}"
    if key not in TRAINED:
        train_frame, val_frame, classes = frames
        if family in NETWORKS:
            from stages import train
            from stages.tf_setup import quiet_tensorflow

            quiet_tensorflow()
            model, history, _ = train.train(family, params, train_frame, val_frame, classes,
                                            features=features)
            assert len(history["loss"]) == 1
        else:
            from stages import train_trees

            model, summary = train_trees.train(family, params, train_frame, val_frame, classes,
                                               features, n_jobs=1)
            assert 0 <= summary["val_accuracy"] <= 1
        TRAINED[key] = model
    return TRAINED[key]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.where for r in RECIPES])
def test_every_dvc_exp_run_recipe_validates_and_trains(recipe, tmp_path, frames):
    assert recipe.args is not None
    assert set(recipe.targets) <= stages_of_dvc_yaml(), f"{recipe.where}: unknown stage"
    defaults = read_params_file(REPO / "params.yaml")
    changed = apply_overrides(defaults, recipe.overrides)
    params = validated(changed, tmp_path)
    sections = {key.split(".")[0] for key, _ in recipe.overrides}
    families = [f for f in (*NETWORKS, *TREES) if f in sections]
    if "features" in sections:  # every family retrains: try the published one (the blend:
        # its members, the MLP first)
        families.append("mlp" if params["model"] == "blend" else params["model"])
    for family in dict.fromkeys(families):
        train_family(family, tiny_budget(family, params[family]),
                     FEATURE_SETS[params["features"]], frames)


def test_the_study_mlp_recipe_gives_one_network_without_embeddings(tmp_path, frames):
    study = [r for r in RECIPES if ("mlp.hidden", "[100,150,150,150]") in r.overrides]
    assert study, "the docs lost the study's MLP recipe"
    for recipe in study:
        params = validated(apply_overrides(read_params_file(REPO / "params.yaml"),
                                           recipe.overrides), tmp_path)["mlp"]
        model = train_family("mlp", tiny_budget("mlp", params),
                             FEATURE_SETS[load_feature_set(REPO / "params.yaml")], frames)
        names = [layer.name for layer in model.layers]
        # no ensemble (members_in / member_adapter / member_heads / members), no embeddings
        assert not [n for n in names if n.startswith(("member", "feature_tokens", "embedded"))]
        dense = [layer for layer in model.layers if layer.name.startswith("dense_")]
        assert [layer.units for layer in dense] == [100, 150, 150, 150]
        assert [n for n in names if n.startswith("dropout")] == ["dropout_0"]
        assert not [n for n in names if n.startswith("bn_")]
        assert model.get_layer("dropout_0").rate == pytest.approx(0.2)
        assert model.output_shape == (None, len(frames[2]))


def test_a_broken_recipe_is_caught(tmp_path):
    """What the recipe test relies on: the old MLP recipe fails on today's defaults."""
    old = _command_args("dvc exp run -S mlp.hidden='[100,150,150,150]' -S mlp.dropout_at=first "
                        "-S mlp.batch_norm=false -S mlp.embedding_dim=0 -S mlp.inputs=standardized")
    recipe = Recipe("old", old)
    from stages.common import UserError

    with pytest.raises(UserError, match="numeric_embedding periodic needs embedding_dim >= 1"):
        validated(apply_overrides(read_params_file(REPO / "params.yaml"), recipe.overrides),
                  tmp_path)
    with pytest.raises(AssertionError, match="no such param"):
        apply_overrides(read_params_file(REPO / "params.yaml"), [("mlp.hiden", "[1]")])


def test_recipes_are_found_in_code_blocks_and_inline_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text `dvc exp run -S a.b=1\n-S c.d='[1, 2]'` more, `dvc exp run`\n\n```bash\n"
                    "$ dvc exp run --queue -n x -S e=f evaluate   # a comment\ndvc exp show\n"
                    "error: x.csv: … dvc exp run -S fetch.sha256=3f1c…\n```\n")
    found = collect_recipes([page])
    assert [r.args for r in found] == [
        ("--queue", "-n", "x", "-S", "e=f", "evaluate"), ("-S", "a.b=1", "-S", "c.d=[1, 2]")]
    assert found[0].overrides == [("e", "f")] and found[0].targets == ["evaluate"]


# --- links ---------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: links reduced to their text, lowercase, punctuation dropped
    (letters, digits, '_', '-' and spaces stay), spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(text):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")  # repeats get -1, -2, …
        seen[anchor] = count + 1
    return anchors


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = INLINE_CODE.sub("", text)
    return [target for target in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto:


def test_github_anchor_rules():
    assert github_anchor("Networks against trees: what was tried") == \
        "networks-against-trees-what-was-tried"
    assert github_anchor("Defaults that differ from the study, and why") == \
        "defaults-that-differ-from-the-study-and-why"
    assert github_anchor("Learned vs the study's merge, retrained") == \
        "learned-vs-the-studys-merge-retrained"
    assert github_anchor("The `fetch` stage") == "the-fetch-stage"


@pytest.mark.parametrize("page", PAGES, ids=[rel(p) for p in PAGES])
def test_every_relative_link_resolves(page):
    links = relative_links(page)
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in anchors_of(file)):
            broken.append(f"{target}: no heading #{anchor} in {rel(file)}")
    assert not broken, f"{rel(page)}: " + "; ".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## A section\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#a-section) [bad](a.md#nope) [gone](c.md) `[code](x.md)`\n")
    assert relative_links(page) == ["a.md#a-section", "a.md#nope", "c.md"]
    assert anchors_of(tmp_path / "a.md") == {"title", "a-section"}

