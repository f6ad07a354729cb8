"""Helpers shared by the tests that run the Snakemake workflow: paths, a Snakemake runner, sample sheets,
and the workflow's rules as Snakemake itself parses them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [
    *(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")),
    *("--configfile", str(REPO / "config" / "config.yaml")),
]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # Run from the repository root, where `--profile slurm` finds the profile (Snakemake looks in $CWD).
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs a dry run would execute, per rule (from Snakemake's job stats table)."""
    output = snakemake(workdir, "--dry-run", *args).stdout
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", output, re.MULTILINE)}


def write_sheet(path: Path, rows: list[tuple[str, ...]]) -> None:
    lines = ["genome_id\tpath\tgenetic_code\tkind"] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def workflow_rules(workdir: Path, *config: str, configfiles: Sequence[Path] = ()) -> dict[str, dict]:
    """Every rule of the workflow, parsed by Snakemake with config/config.yaml, then `configfiles`, then
    `--config` entries `config` (key=value), as {name: {snakefile, conda (absolute path or None), script
    (absolute path or None), shell, action, gpu, input, params, output, log, benchmark}}. Files are path
    patterns as the rule spells them (wildcards with their constraints), and input functions and params
    that are functions appear as their names. Parsed in a child process: the Snakefile sets environment
    variables and changes directory."""
    request = {"workdir": str(workdir), "config": list(config), "configfiles": [str(path) for path in configfiles]}
    result = subprocess.run([sys.executable, __file__, json.dumps(request)], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise AssertionError(f"parsing the workflow failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def _text(item: object) -> str:
    """An input or param as text that is the same in every process: a function by its name, not its address."""
    return getattr(item, "__qualname__", None) or str(item)


def _print_rules(workdir: str, config: list[str], configfiles: list[str]) -> None:
    # snakemake's API hands out the parsed Workflow only through WorkflowApi._workflow (no public
    # accessor); pyproject pins snakemake to one major version.
    from snakemake.api import SnakemakeApi
    from snakemake.cli import parse_config
    from snakemake.settings.types import ConfigSettings, OutputSettings, Quietness, ResourceSettings

    overrides = parse_config(config)
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(
                configfiles=[REPO / "config" / "config.yaml", *map(Path, configfiles)], config=overrides
            ),
            snakefile=REPO / "Snakefile",
            workdir=Path(workdir),
        )._workflow
        rules = {}
        for rule in workflow.rules:
            here = Path(rule.snakefile).parent
            action = next(
                (kind for kind in ("script", "shell", "run", "notebook", "wrapper") if getattr(rule, f"is_{kind}")),
                None,
            )
            rules[rule.name] = {
                "snakefile": rule.snakefile,
                "conda": str((here / rule.conda_env).resolve()) if rule.conda_env else None,
                "script": str((here / rule.script).resolve()) if rule.script else None,
                "shell": rule.shellcmd,
                "action": action,
                "gpu": "gpu" in rule.resources,
                "input": [_text(item) for item in rule.input],
                "params": {name: _text(value) for name, value in rule.params.items()},
                "output": [str(path) for path in rule.output],
                "log": [str(path) for path in rule.log],
                "benchmark": str(rule.benchmark) if rule.benchmark else None,
            }
    print(json.dumps(rules))


if __name__ == "__main__":
    _print_rules(**json.loads(sys.argv[1]))
