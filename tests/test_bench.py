"""The benchmarks' shared machine report (bench/machine.py) and the GPU check's dry run (bench/gpu_check.sh --dry):
every section of the check runs on the CPU with tiny sizes on real proteins, passes its own tolerances, and the
report starts with the machine. The check's GPU run itself needs a GPU machine (docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SECTIONS = [
    "esm_parity",
    "bacformer_parity",
    "esm_throughput",
    "padded_vs_packed",
    "bacformer_shard",
    "pretrain_step",
    "oom",
]


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


machine = bench_module("machine")


def test_bf16_support_is_read_from_the_cpu_flags():
    assert machine.bf16_support({"avx2", "fma"})["native"] == "none"
    assert machine.bf16_support({"avx512f", "avx512_bf16"})["native"] == "AVX512-BF16"
    assert machine.bf16_support({"avx512_bf16", "amx_bf16", "amx_tile"})["native"] == "AMX"
    assert machine.bf16_support({"fp", "asimd", "bf16"})["native"] == "Arm BF16"


def test_the_flags_agree_with_torchs_own_checks():
    support = machine.bf16_support()
    flags = machine.cpu_flags()
    assert support["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if "torch_avx512_bf16_supported" in support:
        assert support["torch_avx512_bf16_supported"] == ("avx512_bf16" in flags)
    if "torch_amx_tile_supported" in support:
        assert support["torch_amx_tile_supported"] == ("amx_tile" in flags)


def test_machine_info_measures_both_rates_and_renders_them():
    info = machine.machine_info(seconds=0.05, gpu=False)
    assert info["cpu_model"] and info["cpu_model"] != "unknown"
    rates = info["cpu_matmul_gflop_per_s"]
    # A CPU does tens to thousands of GFLOP/s in either precision; 0 or inf would be a broken timer.
    assert all(0.1 < rates[dtype] < 1e5 for dtype in ("float32", "bfloat16")), rates
    text = machine.machine_markdown(info)
    assert f"`{info['cpu_model']}`" in text
    assert re.search(r"float32 [\d,]+ GFLOP/s, bfloat16 [\d,]+ GFLOP/s", text)
    assert f"bfloat16 on the CPU: {info['bf16']['native']}" in text
    assert "- GPU: none" in text


def test_a_gpu_is_rendered_with_its_measured_rates():
    info = machine.machine_info(seconds=0.01, gpu=False)
    info["gpu"] = {
        "name": "NVIDIA H100 80GB HBM3",
        "count": 1,
        "compute_capability": "9.0",
        "memory_gib": 79.2,
        "cuda": "13.0",
        "matmul": "8192 x 8192 x 8192",
        "matmul_tflop_per_s": {"bfloat16": 781.4, "float32": 51.2},
        "tf32_matmul": False,
    }
    assert (
        "- GPU: NVIDIA H100 80GB HBM3, compute capability 9.0, 79 GiB, CUDA 13.0; measured 8192 x 8192 x 8192 "
        "products: bfloat16 781 TFLOP/s, float32 51 TFLOP/s (TF32 off)"
    ) in machine.machine_markdown(info)


def test_every_benchmark_reports_the_machine():
    """Item 5 of issue 15: results of different kinds of machine are never shown without the machine."""
    # The report itself; subprocesses of bacformer.py and bacformer_large.py (their parents report the machine).
    helpers = {"machine.py", "bacformer_reference.py", "bacformer_large_reference.py"}
    for script in sorted(set(BENCH.glob("*.py")) - {BENCH / name for name in helpers}):
        text = script.read_text()
        assert "machine_info(" in text and "machine_markdown(" in text, script.name


def test_plan_scale_reports_the_machine_of_each_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The planning benchmark's page shows each run's machine, also beside runs recorded before bench/machine.py."""
    monkeypatch.syspath_prepend(str(BENCH))
    plan_scale = bench_module("plan_scale")
    monkeypatch.setattr(plan_scale, "RESULTS", tmp_path)
    row = {"genomes": 10, "shard_size": 5, "shards": 2, "buckets": 2, "jobs": 23, "wall_s": 3.0, "cpu_s": 2.9}
    row |= {"peak_rss_mib": 200, "plan_s": 0.1, "load_average": [0.5, 0.4, 0.3]}
    old = {"cpu_model": "Old CPU", "nproc": 2, "memory_gib": 24, "bf16": False, "python": "3.11", "snakemake": "9"}
    runs = {
        "old": {"date": "2026-12-01", "machine": old | {"commit": "a"}, "rows": [row]},
        "new": {"date": "2026-12-06", "machine": plan_scale.machine(), "rows": [row]},
    }
    plan_scale.write_markdown(runs)
    text = (tmp_path / "plan_scale.md").read_text()
    assert "Machine: Old CPU, 2 CPUs, 24 GiB, bf16 no;" in text
    new_part = text.split("## new")[1]
    assert f"bf16 {runs['new']['machine']['bf16']['native']};" in new_part and "GFLOP/s" in new_part
    assert text.count("| 10 | 5 | 2 | 2 | 23 | 3.0 | 2.9 | 200 | 0.1 | 0.5, 0.4, 0.3 |") == 2


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    output = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--dry", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    return output, run


def test_the_dry_run_runs_every_section(dry_run):
    output, run = dry_run
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads((output / "gpu_check_dry.json").read_text())
    assert document["dry"] and document["command"] == f"bash bench/gpu_check.sh --dry --output {output}"
    failed = {name: section.get("error") for name, section in document["sections"].items() if section["status"] != "ok"}
    assert failed == {}
    assert list(document["sections"]) == SECTIONS
    # Every check with a tolerance holds it (the thresholds are the module's: see its docstring).
    verdicts = {name: section["result"].get("passed") for name, section in document["sections"].items()}
    # None where EsmEncoder cannot pack tokens; else packed vectors within the cosine tolerance of padded ones.
    assert verdicts.pop("padded_vs_packed") in (None, True)
    assert verdicts == {
        "esm_parity": True,
        "bacformer_parity": True,
        "esm_throughput": None,
        "bacformer_shard": None,
        "pretrain_step": True,
        "oom": True,
    }
    assert not (BENCH / "results" / "gpu_check_dry.md").exists()


def test_the_dry_run_measures_real_proteins_and_both_sides(dry_run):
    output, _ = dry_run
    sections = {
        name: s["result"] for name, s in json.loads((output / "gpu_check_dry.json").read_text())["sections"].items()
    }
    parity = sections["esm_parity"]
    assert parity["proteins"] == 24 and parity["tokens"] > 24 * 50  # real proteins, not stubs
    assert parity["float32_vs_reference"]["max_abs_difference"] < 1e-4
    throughput = sections["esm_throughput"]["rows"]
    assert set(throughput) == {"reference", "bacflow"}
    assert all(row["tokens_per_s"] > 0 and 0 < row["share_of_own_dtype_rate"] < 1.5 for row in throughput.values())
    padded = sections["padded_vs_packed"]
    assert padded["rows"]["padded"]["tokens_computed"] > padded["tokens"]  # length-sorted batches still pad
    assert ("packed" in padded["rows"]) != padded["packed_option"].startswith("not available")
    if "packed" in padded["rows"]:
        assert padded["rows"]["packed"]["tokens_computed"] == padded["tokens"]
    shard = sections["bacformer_shard"]
    assert shard["job_counts"]["genomes"] == shard["genomes"] == 3
    oom = sections["oom"]
    assert oom["halvings"] > 0 and oom["final_budget"] < oom["first_budget"]
    step = sections["pretrain_step"]
    assert step["measured_step"]["tokens_per_s_median"] > 0 and step["trainer_step"]["model_written"]


def test_the_dry_report_starts_with_the_machine(dry_run):
    output, _ = dry_run
    text = (output / "gpu_check_dry.md").read_text()
    head = text.split("## Summary")[0]
    assert "Command: `bash bench/gpu_check.sh --dry" in head and "## Machine" in head
    assert "- CPU: `" in head and "bfloat16 on the CPU:" in head and "GFLOP/s" in head
    assert "torch " in head
    for name in SECTIONS:
        assert f"\n## {name}\n" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the full check would run")
def test_the_full_check_needs_a_gpu(tmp_path: Path):
    run = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "--output", str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode != 0 and "no GPU is visible" in run.stderr
    assert list(tmp_path.iterdir()) == []
