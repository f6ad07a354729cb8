"""`bacflow.core.logs.logging_to`, which every workflow script runs in: bad input ends the job with its one-line
message (log and stderr) and no traceback; any other error keeps its traceback, for a bug report."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = textwrap.dedent(
    """
    import sys
    from bacflow.core.errors import InputError
    from bacflow.core.logs import logging_to

    with logging_to(sys.argv[1]):
        raise {error}("sheet.tsv, line 3: something is wrong")
    """
)


def run_failing_script(tmp_path: Path, error: str) -> tuple[subprocess.CompletedProcess, str]:
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT.format(error=error))
    log = tmp_path / "logs" / "job.log"
    result = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True, cwd=REPO)
    return result, log.read_text()


def test_bad_input_fails_the_job_with_its_message_only(tmp_path: Path):
    result, log = run_failing_script(tmp_path, "InputError")
    assert result.returncode == 1
    assert result.stderr == "bacflow: sheet.tsv, line 3: something is wrong\n"
    assert "ERROR bacflow: sheet.tsv, line 3: something is wrong" in log and "Traceback" not in log


@pytest.mark.parametrize("error", ["RuntimeError", "KeyError"])
def test_other_errors_keep_their_traceback(tmp_path: Path, error: str):
    result, log = run_failing_script(tmp_path, error)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and f"{error}: " in result.stderr
    assert "Traceback" in log
