"""stages.common's set-up of a stage's process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

# A stage's main (through cli) frees and reallocates a 64 MB array five times and counts
# the page faults that cost: with glibc's defaults each new array is fresh mapped memory.
FAULTS_OF_REALLOCATION = """
import resource
import numpy as np
from stages.common import cli, reuse_freed_memory

@cli
def main():
    np.ones(8 << 20)  # the first one may fault: nothing was freed yet
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        np.ones(8 << 20)
    print(reuse_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

main()
"""


def test_a_stage_reuses_freed_memory_instead_of_faulting_in_new_pages():
    if not sys.platform.startswith("linux"):
        pytest.skip("the malloc settings are glibc's")
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_REALLOCATION], cwd=REPO,
                            capture_output=True, text=True, check=True)
    took, faults = result.stdout.split()
    if took != "True":
        pytest.skip("this C library ignores mallopt (not glibc)")
    # glibc's defaults: 2,720 faults here (320 MB, partly in huge pages); reused: 0
    assert int(faults) < 64
