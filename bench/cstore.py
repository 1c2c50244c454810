"""C-STORE benchmark: dcmtk ``storescu`` against our server, a bare SCP and Orthanc.

Usage (data from ``python -m bench.gen DATA``)::

    python -m bench.cstore DATA [--servers orthanc,bare-stock,bare,pacs,pacs-noenc,pacs-hsm,pacs-tls,
                                           pacs-cloud,pacs-cloud-2]
        [--scenarios small-1,ct-1,ct-4,big-1] [--small-count 500] [--ct-count 200]
        [--stock-client]

Every (server, scenario) pair gets a fresh server process with its own
temporary storage directory. The client is dcmtk ``storescu`` with
``TCP_NODELAY=1`` (``--stock-client``: without it, Nagle's algorithm on);
``ct-4`` runs 4 storescu processes on 4 quarters of the files. Measurement starts once the server's process tree is idle (see :func:`wait_idle`).
Memory is the server process tree's summed PSS (proportional set size: a page shared by several
processes counts once, split between them), sampled every 0.5 s and once at the end; "growth" is
the peak minus the PSS just before the client started. Summed RSS would count the pages our forked
workers share (libraries, the imported code) once per process: for ``pacs serve`` (parent, two
DIMSE workers, gunicorn and its two workers, the retention loop) ~600 MB idle against ~370 MB PSS.
Orthanc is one process, where the two are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

AET = "PACS"
DEFAULT_PACS_CMD = "pacs serve"


@dataclass
class Result:
    """One measured row of the table."""

    server: str
    scenario: str
    instances: int
    seconds: float
    megabytes: float
    peak_pss_mb: float
    pss_growth_mb: float
    ok: bool
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mbps(self) -> float:
        """Megabytes per second."""
        return self.megabytes / self.seconds if self.seconds else 0.0


def free_port() -> int:
    """Return a currently free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def _tree(pid: int | list[int]) -> list[int]:
    """Return ``pid`` (one or several) and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(pid) if isinstance(pid, list) else [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_seconds(pid: int | list[int]) -> float:
    """Sum user+system CPU time of ``pid``'s process tree (incl. reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def tree_pss_bytes(pid: int | list[int]) -> int:
    """Sum the PSS of ``pid`` and all its descendants (Linux /proc/PID/smaps_rollup).

    Reading it walks each process's page tables: ~2 ms per process here, so sample it sparingly."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class MemorySampler:
    """Sample the summed PSS of a process tree in a background thread (and once more at exit)."""

    def __init__(self, pid: int | list[int], interval: float = 0.5) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_bytes(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss_bytes(self.pid))


@dataclass
class Server:
    """How to start one kind of server."""

    name: str
    start: Callable[[Path, int], subprocess.Popen]
    client_args: tuple[str, ...] = ()  # extra storescu options (e.g. +tls ...)
    nodes: int = 1  # several: ``start_nodes`` starts them, the associations are spread over them
    start_nodes: Callable[[Path, list[int]], list[subprocess.Popen]] | None = None


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def pacs_server(name: str, cmd: str, extra_env: dict[str, str], blob_store: str = "") -> Server:
    """Our server: ``cmd`` with PACS_* environment variables (``blob_store``: bench/objectstores.py)."""

    def start(tmp: Path, port: int) -> subprocess.Popen:
        env = dict(os.environ)
        if blob_store:
            from bench.objectstores import env_for

            env.update(env_for(blob_store, tmp))
        env.update(
            PACS_DATA_DIR=str(tmp / "data"),
            PACS_DICOM_PORT=str(port),
            PACS_HTTP_PORT=str(free_port()),
            PACS_AE_TITLE=AET,
            TCP_NODELAY="1",
            **extra_env,
        )
        return _popen(shlex.split(cmd), env, tmp / "server.log")

    return Server(name, start)


SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"  # Debian's softhsm2


def pacs_hsm_server(name: str, cmd: str) -> Server:
    """Our server with the master key in a fresh SoftHSM2 token (PKCS#11, storage/hsm.py)."""

    def start(tmp: Path, port: int) -> subprocess.Popen:
        tokens = tmp / "tokens"
        tokens.mkdir(parents=True)
        conf = tmp / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
        env = dict(os.environ, SOFTHSM2_CONF=str(conf))
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin",
                        "bench-so", "--pin", "bench-pin"], env=env, check=True, capture_output=True)
        return pacs_server(name, cmd, {
            "SOFTHSM2_CONF": str(conf), "PACS_MASTER_KEY": "pkcs11:token=bench;object=master",
            "PACS_PKCS11_MODULE": SOFTHSM2_MODULE, "PACS_PKCS11_PIN": "bench-pin"}).start(tmp, port)

    return Server(name, start)


def pacs_tls_server(name: str, cmd: str, pki_dir: Path) -> Server:
    """Our server with only the DICOM TLS port (PS3.15 B.9, pacs/tls.py); storescu uses +tls."""
    from tests.tlscerts import make_pki

    pki = make_pki(pki_dir)

    def start(tmp: Path, port: int) -> subprocess.Popen:
        return pacs_server(name, cmd, {
            "PACS_DICOM_TLS": "1", "PACS_DICOM_PLAIN": "0", "PACS_DICOM_TLS_PORT": str(port),
            "PACS_TLS_CERT_FILE": str(pki.server_cert), "PACS_TLS_KEY_FILE": str(pki.server_key),
            "PACS_TLS_CA_FILE": str(pki.ca)}).start(tmp, port)

    return Server(name, start, ("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)))


def pacs_cloud_server(name: str, cmd: str, nodes: int) -> Server:
    """``nodes`` × our server on one fresh PostgreSQL database and one S3 prefix (bench/cloud.py).

    Node A starts first (it creates the schema and the shared master key), B once A listens. The
    figures cover the nodes' process trees, not PostgreSQL's or SeaweedFS's."""
    from bench.cloud import start_nodes

    def start_many(tmp: Path, ports: list[int]) -> list[subprocess.Popen]:
        return start_nodes(tmp, ports, shlex.split(cmd), lambda p, port: wait_listening(port, p))

    return Server(name, lambda tmp, port: start_many(tmp, [port])[0], nodes=nodes,
                  start_nodes=start_many)


def bare_server(name: str, *flags: str, env: dict[str, str] | None = None) -> Server:
    """The bench's own bare SCP (write + fsync only)."""
    extra = env or {}

    def start(tmp: Path, port: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "bench.bare_scp", "--port", str(port)]
        cmd += ["--dir", str(tmp / "data"), *flags]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), **extra)
        return _popen(cmd, env, tmp / "server.log")

    return Server(name, start)


def orthanc_server(binary: str = "Orthanc") -> Server:
    """Debian's Orthanc with a generated configuration."""

    def start(tmp: Path, port: int) -> subprocess.Popen:
        storage = tmp / "orthanc-db"
        config = {
            "Name": "bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": AET,
            "DicomPort": port,
            "HttpPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "Plugins": [],
        }
        cfg = tmp / "orthanc.json"
        cfg.write_text(json.dumps(config))
        env = dict(os.environ, TCP_NODELAY="1")
        return _popen([binary, str(cfg)], env, tmp / "server.log")

    return Server("orthanc", start)


def run_storescu(files: list[Path], port: int | list[int], parallel: int, timeout: float, *,
                 nodelay: bool = True, client_args: tuple[str, ...] = ()) -> bool:
    """Send ``files`` over ``parallel`` associations; return True if all succeeded.

    With several ports (nodes of one cluster), association ``i`` goes to ``port[i % len(port)]``:
    ct-4 on two nodes is two storescu processes to each; small-1 is one, to the first node.

    ``nodelay=False`` runs storescu as installed: Debian's dcmtk leaves Nagle's algorithm on unless
    ``TCP_NODELAY`` is set in the environment, as do many modalities' DICOM stacks."""
    env = dict(os.environ, TCP_NODELAY="1") if nodelay else {
        k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    chunks = [files[i::parallel] for i in range(parallel)]
    ports = port if isinstance(port, list) else [port]
    procs = []
    for i, chunk in enumerate(chunks):
        if not chunk:
            continue
        cmd = ["storescu", "-aec", AET, "-aet", "BENCH", "--timeout", "30", "-nh", *client_args]
        cmd += ["127.0.0.1", str(ports[i % len(ports)]), *map(str, chunk)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    ok = True
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            ok = False
        if p.returncode != 0 or b"E: " in out:
            ok = False
            sys.stderr.write(out.decode(errors="replace")[-2000:])
    return ok


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_idle(pid: int | list[int], timeout: float = 30.0) -> None:
    """Block until the server's process tree uses under 5 % of a core over 0.5 s (or timeout)."""
    deadline = time.monotonic() + timeout
    before = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_cpu_seconds(pid)
        if now - before < 0.025:
            return
        before = now


def measure(server: Server, scenario: str, files: list[Path], parallel: int, timeout: float,
            nodelay: bool = True) -> Result:
    """Start ``server`` fresh, send ``files``, stop it, return the figures."""
    # Start with nothing dirty in the page cache: a server that does not fsync (Orthanc) leaves
    # ~100 MB of CT to be written back during the next server's run, where it delays every fsync.
    os.sync()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{server.name}-"))
    ports = [free_port() for _ in range(server.nodes)]
    procs: list[subprocess.Popen] = []
    ok = False
    try:
        if server.start_nodes is not None:
            procs = server.start_nodes(tmp, ports)
        else:
            procs = [server.start(tmp, ports[0])]
        for port, proc in zip(ports, procs, strict=True):
            wait_listening(port, proc)
        pids = [p.pid for p in procs]
        wait_idle(pids)  # steady state: e.g. pacs serve's web workers still booting
        base = tree_pss_bytes(pids)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        cpu0 = tree_cpu_seconds(pids)
        with MemorySampler(pids) as memory:
            t0 = time.perf_counter()
            ok = run_storescu(files, ports, parallel, timeout, nodelay=nodelay,
                              client_args=server.client_args)
            seconds = time.perf_counter() - t0
        return Result(
            server.name, scenario, len(files), seconds, megabytes,
            memory.peak / 1e6, (memory.peak - base) / 1e6, ok, tree_cpu_seconds(pids) - cpu0,
        )
    finally:
        for proc in procs:
            stop(proc)
        if not ok:
            for log in sorted(tmp.glob("**/server.log")):
                name = "-".join(log.relative_to(tmp).parts[:-1]) or "server"
                keep = Path(tempfile.gettempdir()) / (
                    f"bench-failed-{server.name}-{scenario}-{ports[0]}-{name}.log")
                shutil.copyfile(log, keep)
                print(f"# server log kept: {keep}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def scenario_files(data: Path, name: str, small: int, ct: int) -> tuple[list[Path], int]:
    """Return the files and the number of associations for a scenario."""
    kind, par = name.split("-")
    if kind == "small":
        files = sorted((data / "small").glob("*.dcm"))[:small]
    elif kind == "ct":
        files = sorted((data / "ct").glob("*.dcm"))[:ct]
    elif kind == "big":
        files = sorted((data / "big").glob("*.dcm"))
    else:
        raise ValueError(f"unknown scenario {name}")
    if not files:
        raise FileNotFoundError(f"no files for scenario {name} under {data}")
    return files, int(par)


def print_table(results: list[Result]) -> None:
    """Print a Markdown table with the ratio to Orthanc's rate per scenario."""
    ref = {r.scenario: r.rate for r in results if r.server == "orthanc" and r.ok}
    print("| server | scenario | n | inst/s | MB/s | x Orthanc | peak PSS MB | PSS growth MB "
          "| server CPU ms/inst | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r.rate / ref[r.scenario]:.2f}" if r.scenario in ref else "-"
        print(
            f"| {r.server} | {r.scenario} | {r.instances} | {r.rate:.0f} | {r.mbps:.0f} "
            f"| {ratio} | {r.peak_pss_mb:.0f} | {r.pss_growth_mb:.0f} "
            f"| {1000 * r.cpu_seconds / r.instances:.2f} | {'yes' if r.ok else 'NO'} |"
        )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--servers", default="orthanc,bare-stock,bare")
    ap.add_argument("--scenarios", default="small-1,ct-1,ct-4")
    ap.add_argument("--small-count", type=int, default=500)
    ap.add_argument("--ct-count", type=int, default=200)
    ap.add_argument("--pacs-cmd", default=DEFAULT_PACS_CMD, help="command line of our server")
    ap.add_argument("--repeat", type=int, default=1, help="runs per pair (median is kept)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    ap.add_argument("--stock-client", action="store_true",
                    help="run storescu without TCP_NODELAY=1 (Nagle on, as installed)")
    args = ap.parse_args(argv)

    known = {
        "orthanc": orthanc_server(),
        "bare-stock": bare_server("bare-stock", "--no-tune"),
        "bare": bare_server("bare"),
        "bare-2w": bare_server("bare-2w", "--workers", "2"),
        "bare-chunked": bare_server("bare-chunked", "--chunked"),
        "bare-pdu16k": bare_server("bare-pdu16k", "--max-pdu", "16382"),
        "bare-stock-nofsync": bare_server("bare-stock-nofsync", "--no-tune", "--no-fsync"),
        "bare-nofsync": bare_server("bare-nofsync", "--no-fsync"),
        "bare-nofsync-si5": bare_server(
            "bare-nofsync-si5", "--no-fsync", env={"PACS_DIMSE_SWITCH_INTERVAL": "0.005"}
        ),
        "bare-fast": bare_server("bare-fast", "--fast"),
        "bare-fast-nofsync": bare_server("bare-fast-nofsync", "--fast", "--no-fsync"),
        "bare-fast-nofsync-16k": bare_server(
            "bare-fast-nofsync-16k", "--fast", "--no-fsync", env={"PACS_DIMSE_MAX_PDU": "16382"}
        ),
        "bare-fast-16k": bare_server("bare-fast-16k", "--fast", env={"PACS_DIMSE_MAX_PDU": "16382"}),
        "pacs-slow": pacs_server("pacs-slow", args.pacs_cmd, {"PACS_DIMSE_FAST_STORE": "0"}),
        "pacs-stock": pacs_server("pacs-stock", args.pacs_cmd, {"PACS_DIMSE_PATCHES": "0"}),
        "bare-2w-nofsync": bare_server("bare-2w-nofsync", "--workers", "2", "--no-fsync"),
        "pacs": pacs_server("pacs", args.pacs_cmd, {}),
        "pacs-noenc": pacs_server("pacs-noenc", args.pacs_cmd, {"PACS_BENCH_NO_ENCRYPTION": "1"}),
        # blob stores (bench/objectstores.py): S3 on SeaweedFS, 3-of-5 dispersal
        "pacs-s3": pacs_server("pacs-s3", args.pacs_cmd, {}, "s3"),
        "pacs-dispersal": pacs_server("pacs-dispersal", args.pacs_cmd, {}, "dispersal"),
        "pacs-dispersal-s3": pacs_server("pacs-dispersal-s3", args.pacs_cmd, {}, "dispersal-s3"),
        "pacs-hsm": pacs_hsm_server("pacs-hsm", args.pacs_cmd),
        # the cloud set-up (bench/cloud.py): PostgreSQL (fsync on) + SeaweedFS S3, one or two nodes
        "pacs-cloud": pacs_cloud_server("pacs-cloud", args.pacs_cmd, 1),
        "pacs-cloud-2": pacs_cloud_server("pacs-cloud-2", args.pacs_cmd, 2),
    }
    if "pacs-tls" in args.servers.split(","):
        known["pacs-tls"] = pacs_tls_server("pacs-tls", args.pacs_cmd,
                                            Path(tempfile.mkdtemp(prefix="bench-pki-")))
    results = []
    servers = args.servers.split(",")
    for scen in args.scenarios.split(","):
        files, par = scenario_files(args.data, scen, args.small_count, args.ct_count)
        runs: dict[str, list[Result]] = {name: [] for name in servers}
        for _ in range(args.repeat):  # interleaved, so load drift hits every server alike
            for name in servers:
                r = measure(known[name], scen, files, par, args.timeout, not args.stock_client)
                runs[name].append(r)
                print(f"# {name} {scen}: {r.rate:.0f}/s ok={r.ok}", file=sys.stderr, flush=True)
        for name in servers:
            rs = runs[name]
            median = sorted(rs, key=lambda r: (r.ok, r.rate))[len(rs) // 2]
            median.peak_pss_mb = max(r.peak_pss_mb for r in rs)
            median.pss_growth_mb = max(r.pss_growth_mb for r in rs)
            results.append(median)
    print_table(results)
    clusters = [n for n in servers if known[n].nodes > 1]
    if clusters:
        print(f"\n{', '.join(clusters)}: the N associations of a scenario go round-robin to the nodes "
              "(ct-4 on 2 nodes: 2 storescu to each; small-1: one storescu, to node A only). "
              "pacs-cloud*: PostgreSQL (fsync on) + SeaweedFS S3; PSS and CPU are the pacs nodes' "
              "process trees, without PostgreSQL and SeaweedFS.")
    ref = {r.scenario: r.rate for r in results if r.server == "pacs" and r.ok}
    cloud = [r for r in results if r.server.startswith("pacs-cloud")]
    if ref and cloud:  # issue 16 part 8: (b) keeps >= 0.8 x (a)'s ingest throughput
        print("\n| server | scenario | inst/s | x pacs (embedded defaults) |\n|---|---|---|---|")
        for r in cloud:
            ratio = f"{r.rate / ref[r.scenario]:.2f}" if r.scenario in ref and r.ok else "-"
            print(f"| {r.server} | {r.scenario} | {r.rate:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
