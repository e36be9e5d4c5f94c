"""The job tests share one private Ray head running the platform (tests/job_head.py).

`ray start --head` plus `modelplane up` costs 20-60 s on two cores, and every test here
needs the same of it: room for multi-worker jobs, Ray's job API, and the platform set up
as on a cluster. Each test uses its own experiments and model names. The head stops when
the last test here ends, so its idle platform takes no CPU from the tests after it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.job_head import JobHead, start_job_head
from tests.ray_head import RayHead


@pytest.fixture(scope="package")
def job_head() -> Iterator[JobHead]:
    # A HOME of its own with no Ray token: the head runs without token authentication
    # whatever this machine holds, and test_ray_token.py can make a token appear later.
    home = Path(tempfile.mkdtemp(prefix="mph-home"))
    # `ray job stop` SIGKILLs a job 3 s after SIGTERM by default; a loaded CI box may need
    # longer for the job to mark its run killed.
    ray = RayHead(num_cpus=6, extra_env={"RAY_JOB_STOP_WAIT_TIME_S": "30", "HOME": str(home)})
    try:
        yield start_job_head(ray)
    finally:
        ray.stop()
        shutil.rmtree(home, ignore_errors=True)
