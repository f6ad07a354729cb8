"""Build the test oracles' virtual environments (bacformer_helpers.ORACLE_ENVIRONMENTS) ahead of the tests.

CI starts it in the background beside the lint and the unit tests: building them takes minutes, mostly
downloads, and the parity tests wait for each environment (a lock) rather than build it again.
"""

from __future__ import annotations

import pytest

from bacformer_helpers import ORACLE_ENVIRONMENTS, reference_environment

# A failure is printed, not raised: the tests report it again, as a skip or (BACFLOW_REQUIRE_ORACLES=1) a failure.
failures = (pytest.skip.Exception, pytest.fail.Exception)
for venv, install in ORACLE_ENVIRONMENTS:
    try:
        print(f"{reference_environment(venv, install)}: ready", flush=True)
    except failures as outcome:
        print(f"{venv}: {outcome.msg}", flush=True)
