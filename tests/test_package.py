"""bacflow as a Python package: its declared API, a non-editable install that reads a sample sheet with the
schema it ships, and planning a run without PyTorch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import bacflow
from conftest import PYRODIGAL_DATA
from workflow_helpers import REPO, SNAKEMAKE, write_sheet


def imported_modules(code: str, *args: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code` (whose own output is discarded)."""
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules), file=sys.stderr)"
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return set(result.stderr.split())


def test_the_public_api_resolves_and_import_bacflow_loads_no_torch():
    assert set(bacflow.__all__) >= {"read_samples", "annotate_genome", "Embedder", "BacformerModel"}
    for name in bacflow.__all__[1:]:
        assert getattr(bacflow, name).__name__ == name
    assert "torch" not in imported_modules("import bacflow; bacflow.read_samples; bacflow.annotate_genome")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bacflow.nope  # noqa: B018


def test_planning_a_run_imports_no_torch(tmp_path: Path):
    """The rules import only torch-free modules: a dry run of every stage never loads PyTorch (snakemake
    runs in this interpreter; its jobs would run elsewhere)."""
    write_sheet(tmp_path / "samples.tsv", [("SRR492066", str(PYRODIGAL_DATA / "SRR492066.fna.gz"), "11", "mag")])
    args = [
        *SNAKEMAKE[3:],
        *("--directory", str(tmp_path), "--dry-run", "--cores", "1"),
        *("--configfile", str(REPO / "config" / "demo.yaml")),
        *("--config", f"samples={tmp_path / 'samples.tsv'}", "outdir=results"),
        *("--", "all", "pretrain"),
    ]
    code = (
        "import sys, runpy; sys.argv = ['snakemake', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('snakemake', run_name='__main__')\n"
        "except SystemExit as end:\n"
        "    assert not end.code, end.code"
    )
    modules = imported_modules(code, *args)
    assert "bacflow.core.samples" in modules and "bacflow.families.stage" in modules  # the rules were read
    assert not {name for name in modules if name.split(".")[0] in ("torch", "transformers")}


def test_a_non_editable_install_reads_a_sample_sheet(tmp_path: Path):
    """Built as a wheel and installed into a fresh virtual environment (its dependencies taken from this
    one), bacflow reads a sheet with the schema it ships as package data, away from the source tree."""
    source = tmp_path / "source"  # a copy: building writes into the source tree
    for name in ("bacflow", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(
            REPO / name,
            source / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("bacflow-*.whl")
    venv.create(tmp_path / "fresh", with_pip=False)
    python = tmp_path / "fresh" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # This environment's packages without its editable bacflow: a path line adds the folder, not its .pth files.
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        check=True,
        capture_output=True,
    )
    write_sheet(tmp_path / "samples.tsv", [("SRR492066", str(PYRODIGAL_DATA / "SRR492066.fna.gz"), "11", "mag")])
    code = (
        "import sys, bacflow\n"
        "assert bacflow.__file__.startswith(sys.argv[2]), bacflow.__file__\n"
        "(sample,) = bacflow.read_samples(sys.argv[1])\n"
        "print(sample.genome_id, sample.kind, sample.genetic_code, sample.split)"
    )
    alone = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no source tree on the path
    result = subprocess.run(
        [python, "-c", code, str(tmp_path / "samples.tsv"), site],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=alone,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SRR492066", "mag", "11", "None"]
