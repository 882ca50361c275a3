"""Each stage in dvc.yaml depends on exactly the project code it runs: every module of
stages/ that its command imports, directly or through another module, at the top of a
file or inside a function, and no other."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Imported but never run by the stage, each for the reason given: listing them would re-run
# the stage for edits that cannot change its outputs.
NOT_RUN = {
    **{(stage, module): "model_files reads tree files through trees only when it opens "
                        "one; a network's training never does"
       for stage in ("train_softmax", "train_mlp", "train_lstm")
       for module in ("stages/trees.py", "stages/tree_walk.py")},
    ("publish", "stages/split.py"): "taxonomy imports split only to fit a taxonomy; publish "
                                    "reads the fitted one",
}


def _imported(module: str) -> set[str]:
    """The stages.* modules that module imports anywhere in its file."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            found |= {f"stages.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("stages.")}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)
    return found


def code_of(module: str) -> set[str]:
    """The files of module and of everything it imports from stages/, transitively."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_imported(current))
    return {name.replace(".", "/") + ".py" for name in seen}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_import_walk_sees_function_level_and_dynamic_imports():
    # trees imports tree_walk through importlib, model_files imports trees in functions
    assert "stages/tree_walk.py" in code_of("stages.trees")
    assert "stages/trees.py" in code_of("stages.model_files")
    assert code_of("stages.common") == {"stages/common.py"}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_exactly_the_code_it_runs(stage):
    spec = STAGES[stage]
    command = spec["cmd"].split()
    assert command[:2] == ["python", "-m"], spec["cmd"]
    listed = {dep for dep in spec["deps"] if dep.startswith("stages/")}
    runs = {path for path in code_of(command[2])
            if (stage, path) not in NOT_RUN}
    assert sorted(runs - listed) == [], f"{stage}: code it runs but does not depend on"
    assert sorted(listed - runs) == [], f"{stage}: listed code it never runs"


def test_every_exception_names_a_real_stage_and_import():
    for stage, path in NOT_RUN:
        assert path in code_of(STAGES[stage]["cmd"].split()[2]), (stage, path)
