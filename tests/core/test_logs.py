"""`bacflow.core.logs.logging_to`, which every workflow script runs in: bad input and a full disk end the job with
a one-line message (log and stderr) and no traceback; any other error keeps its traceback, for a bug report."""

from __future__ import annotations

import os
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


_WRITER = textwrap.dedent(
    """
    import errno, os, sys
    import pyarrow as pa
    from bacflow.core.logs import logging_to
    from bacflow.core.tables import parquet_writer

    table = pa.table({{"x": list(range(1000))}})
    with logging_to(sys.argv[1]), parquet_writer(sys.argv[2], table.schema, {{}}) as writer:
        writer.write_table(table)
        raise OSError(errno.{code}, os.strerror(errno.{code}){filename})
    """
)


@pytest.mark.parametrize(
    ("code", "filename", "message"),
    [
        # As pyarrow raises it: no file named, so the message names the file being written.
        pytest.param("ENOSPC", "", "disk full at {out}", id="enospc"),
        pytest.param("ENOSPC", ", '/scratch/elsewhere'", "disk full at /scratch/elsewhere", id="enospc-named"),
        pytest.param("EDQUOT", "", "disk quota exceeded at {out}", id="quota"),
    ],
)
def test_a_full_disk_fails_the_job_in_one_line_and_leaves_no_partial_output(
    tmp_path: Path, code: str, filename: str, message: str
):
    script, log, out = tmp_path / "job.py", tmp_path / "logs" / "job.log", tmp_path / "results" / "table.parquet"
    script.write_text(_WRITER.format(code=code, filename=filename))
    result = subprocess.run([sys.executable, str(script), str(log), str(out)], capture_output=True, text=True, cwd=REPO)
    message = message.format(out=out)
    assert result.returncode == 1
    assert result.stderr == f"bacflow: {message}\n"
    assert f"ERROR bacflow: {message}" in log.read_text() and "Traceback" not in log.read_text()
    assert os.listdir(out.parent) == []
