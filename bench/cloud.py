"""The cloud set-up for the benchmarks (issue 16 part 8): ``pacs serve`` nodes on one PostgreSQL
database and one S3 bucket prefix.

Every run gets a fresh database on the bench's PostgreSQL server (bench/postgres.py, fsync on), a
fresh prefix in the bench's SeaweedFS bucket (bench/objectstores.py) and one master key file that
all its nodes read, as in conf/cluster-node.toml and tests/test_cluster.py. Node A starts first:
it creates the schema and the master key; B starts once A listens.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

NODE_NAMES = ("node-a", "node-b", "node-c", "node-d")


def shared_env(tmp: Path) -> dict[str, str]:
    """The PACS_* every node of one run gets: database, bucket prefix and credentials, key file."""
    from bench.objectstores import env_for
    from bench.postgres import shared

    (tmp / "shared").mkdir(parents=True, exist_ok=True)
    return {"PACS_DATABASE_URL": shared().database(), **env_for("s3", tmp),
            "PACS_MASTER_KEY_FILE": str(tmp / "shared" / "master.key")}


def start_nodes(tmp: Path, dicom_ports: list[int], cmd: list[str],
                wait: Callable[[subprocess.Popen, int], None],
                http_ports: list[int] | None = None, ae_title: str = "PACS") -> list[subprocess.Popen]:
    """Start one node per DICOM port (each in its own session, log ``tmp/<node>/server.log``);
    ``wait(proc, dicom_port)`` blocks until a node is up before the next starts."""
    from bench.cstore import free_port

    shared = shared_env(tmp)
    procs: list[subprocess.Popen] = []
    try:
        for i, port in enumerate(dicom_ports):
            name = NODE_NAMES[i]
            data = tmp / name
            data.mkdir(parents=True, exist_ok=True)
            http = http_ports[i] if http_ports else free_port()
            env = dict(os.environ, **shared, PACS_NODE_NAME=name, PACS_DATA_DIR=str(data),
                       PACS_DICOM_PORT=str(port), PACS_HTTP_PORT=str(http),
                       PACS_DICOM_HOST="127.0.0.1", PACS_HTTP_HOST="127.0.0.1",
                       PACS_AE_TITLE=ae_title, TCP_NODELAY="1")
            log = open(data / "server.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            wait(procs[-1], port)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        raise
    return procs
