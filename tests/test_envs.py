"""The per-rule conda environments (envs/*.yaml), checked offline: file format, channel policy, pins, and
that every rule running code has an env providing what that code imports or executes."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import rattler
import yaml

from conftest import PYRODIGAL_DATA
from workflow_helpers import REPO, workflow_rules, write_sheet

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
CHANNELS = ["conda-forge", "bioconda", "nodefaults"]
# Exact (==1.2.3) or one release series (=1.2, =14.7e284): reproducible envs that still take bug fixes.
PINNED = r"^(==)?\d+(\.[0-9A-Za-z]+)+(\.\*)?$"
# Import names whose conda package is named otherwise; any other import is its own package name.
PACKAGE_OF_IMPORT = {
    "Bio": {"biopython"},
    "yaml": {"pyyaml"},
    "torch": {"pytorch", "pytorch-gpu"},
    # Dependencies of transformers, which bounds their versions; an env that has transformers has them.
    "huggingface_hub": {"huggingface_hub", "transformers"},
    "tokenizers": {"tokenizers", "transformers"},
    "sklearn": {"scikit-learn"},
}
# Executables that rules run (in `shell:` or from the package through subprocess), by conda package.
PACKAGE_OF_EXECUTABLE = {"mmseqs": "mmseqs2"}
# Scripts get `snakemake` from Snakemake's own preamble, not from the env.
PROVIDED = {"snakemake"}


def load_env(path: Path) -> dict:
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict), f"{path.name}: not a YAML mapping"
    return env


def dependency_specs(env: dict) -> list[rattler.MatchSpec]:
    return [rattler.MatchSpec(dependency) for dependency in env["dependencies"]]


def test_env_files_exist():
    assert ENV_FILES, "envs/ holds no environment"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda path: path.name)
def test_env_file_format_channels_and_pins(path: Path):
    env = load_env(path)
    assert set(env) <= {"name", "channels", "dependencies"}, f"{path.name}: unexpected keys {set(env)}"
    # conda-forge before bioconda (bioconda's own rule) and nodefaults: never Anaconda's defaults channel.
    assert env.get("channels") == CHANNELS, f"{path.name}: channels must be {CHANNELS}"
    dependencies = env.get("dependencies")
    assert isinstance(dependencies, list) and dependencies, f"{path.name}: no dependencies"
    # pip entries would escape the channel policy and the conda solver's view of the env.
    assert all(isinstance(d, str) for d in dependencies), f"{path.name}: only conda packages (no pip:)"
    names = []
    for dependency in dependencies:
        try:
            spec = rattler.MatchSpec(dependency)
        except rattler.exceptions.InvalidMatchSpecError as error:
            pytest.fail(f"{path.name}: {dependency!r} is not a conda match spec: {error}")
        assert spec.channel is None or spec.channel.name in CHANNELS, f"{path.name}: {dependency!r}: channel"
        assert spec.version is not None and re.match(PINNED, str(spec.version)), (
            f"{path.name}: {dependency!r} is not pinned to a version or a release series (e.g. 'numpy =2.3')"
        )
        names.append(spec.name.normalized)
    assert len(names) == len(set(names)), f"{path.name}: a package is listed twice"
    assert "python" in names, f"{path.name}: pin python"


def test_envs_share_one_python():
    """Snakemake's script preamble imports snakemake from the driving environment into the env's Python,
    so every env runs the same Python version, the one the README's environment uses."""
    pythons = {
        path.name: str(spec.version)
        for path in ENV_FILES
        for spec in dependency_specs(load_env(path))
        if spec.name.normalized == "python"
    }
    assert len(set(pythons.values())) == 1, pythons
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    pinned = next(iter(pythons.values())).lstrip("=")
    assert pinned == f"{running}.*" or pinned.startswith(f"{running}."), f"envs pin {pythons}, tests run {running}"


def code_requirements(path: Path, seen: set[Path] | None = None) -> tuple[set[str], set[str]]:
    """(top-level third-party imports, executables named in string constants) of a Python file and of
    every module of this repository that it imports, transitively. Imports under `if TYPE_CHECKING:` and
    in `try: ... except ImportError:` are not requirements."""
    seen = set() if seen is None else seen
    seen.add(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = {
        id(node)
        for parent in ast.walk(tree)
        if (isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test))
        or (
            isinstance(parent, ast.Try)
            and any(h.type is not None and "ImportError" in ast.unparse(h.type) for h in parent.handlers)
        )
        for statement in parent.body
        for node in ast.walk(statement)
    }
    modules, executables = set(), set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: within this package
            package = ".".join(path.relative_to(REPO).with_suffix("").parts[: -node.level])
            modules.add(f"{package}.{node.module}" if node.module else package)
        elif isinstance(node, ast.Constant) and node.value in PACKAGE_OF_EXECUTABLE:
            executables.add(node.value)
    imports = set()
    for module in modules:
        parts = module.split(".")
        local = [REPO.joinpath(*parts[:n]) for n in range(1, len(parts) + 1)]
        files = [p.with_suffix(".py") for p in local] + [p / "__init__.py" for p in local]
        local_files = [f for f in files if f.is_file()]
        if local_files:  # a module of this repository (its packages' __init__ run too): follow it
            for file in local_files:
                if file not in seen:
                    more_imports, more_executables = code_requirements(file, seen)
                    imports |= more_imports
                    executables |= more_executables
        elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
            imports.add(parts[0])
    return imports, executables


def shell_executables(command: str) -> set[str]:
    return {word for word in command.replace(";", " ").replace("|", " ").split() if word in PACKAGE_OF_EXECUTABLE}


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> dict[str, dict]:
    workdir = tmp_path_factory.mktemp("rules")
    write_sheet(workdir / "samples.tsv", [("g", str(PYRODIGAL_DATA / "KK037166.fna.gz"), "11", "draft")])
    return workflow_rules(workdir, f"samples={workdir / 'samples.tsv'}")


def test_every_rule_running_code_has_an_env_that_provides_its_imports(rules: dict[str, dict]):
    problems = []
    for name, rule in rules.items():
        if rule["action"] in (None, "run"):  # nothing to run, or Python run in Snakemake's own process
            continue
        if rule["conda"] is None or not Path(rule["conda"]).is_file():
            problems.append(f"rule {name}: conda env {rule['conda']} is missing")
            continue
        provided = {spec.name.normalized for spec in dependency_specs(load_env(Path(rule["conda"])))}
        if rule["action"] == "script":
            imports, executables = code_requirements(Path(rule["script"]))
        elif rule["action"] == "shell":
            imports, executables = set(), shell_executables(rule["shell"])
        else:
            problems.append(f"rule {name}: {rule['action']} rules are not checked; use script: or shell:")
            continue
        for module in sorted(imports - PROVIDED):
            packages = PACKAGE_OF_IMPORT.get(module, {module.lower().replace("_", "-")})
            if not packages & provided:
                problems.append(f"rule {name} imports {module}: {Path(rule['conda']).name} lacks {packages}")
        for executable in sorted(executables):
            if PACKAGE_OF_EXECUTABLE[executable] not in provided:
                problems.append(
                    f"rule {name} runs {executable}: {Path(rule['conda']).name} "
                    f"lacks {PACKAGE_OF_EXECUTABLE[executable]}"
                )
    assert not problems, "\n".join(problems)


def test_import_scan_follows_the_package(tmp_path: Path):
    """The scan sees through the package into third-party imports, skips optional ones and the stdlib."""
    script = tmp_path / "script.py"
    script.write_text(
        "import os\nfrom typing import TYPE_CHECKING\nfrom bacflow.proteins.stage import proteins_shard\n"
        "if TYPE_CHECKING:\n    import numpy\ntry:\n    import torch\nexcept ImportError:\n    torch = None\n"
        "def f():\n    import pandas\n    return ['mmseqs', 'easy-cluster']\n"
    )
    imports, executables = code_requirements(script)
    assert {"pyarrow", "pyrodigal", "Bio", "pandas"} <= imports
    assert not imports & {"os", "typing", "numpy", "torch", "bacflow"}
    assert executables == {"mmseqs"}
