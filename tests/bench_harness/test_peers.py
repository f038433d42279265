"""The configs bench/peers.py gives sluice are valid: a bench that cannot start its LB measures nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.peers import Job, sluice_yaml

from sluice.config import load_config


@pytest.mark.parametrize("engine", ["native", "python"])
@pytest.mark.parametrize(
    "job",
    [
        Job("tcp", 8000, 9000, Path("/tmp")),
        Job("udp", 8000, 9000, Path("/tmp")),
        Job("udp", 8000, 9000, Path("/tmp"), udp_responses=1, udp_rcvbuf=1024000),
        Job("udp", 8000, 9000, Path("/tmp"), udp_responses=1, admin=Path("/tmp/sluice-bench/admin.sock")),
    ],
    ids=["tcp", "udp-flow", "udp-dns", "udp-admin"],
)
def test_sluice_config_of_every_job_loads(tmp_path: Path, job: Job, engine: str) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(sluice_yaml(job, engine))
    config = load_config(path)
    assert config.vips[0].protocol == job.proto
