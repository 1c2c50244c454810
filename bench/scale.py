"""Scale benchmark (issue 14): N single-study patients, then the searches a clinic makes.

Usage::

    python -m bench.scale [--patients 200000] [--servers pacs,orthanc] [--runs 5] [--keep DIR]

Data: ``--patients`` patients, one study of one small instance (16x16 MR) each, every patient new
to the archive, with distinct random names drawn from a realistic surname distribution (the most
frequent US census surnames with their shares, so SMITH is ~0.9 % of patients, DOE and JOHNSON
are there too, and a long tail of generated surnames), random given names and middle initials,
study dates over 20 years. Generated here, nothing downloaded.

For each server in turn (ours, ``pacs serve`` with its defaults; Orthanc from Debian's ``orthanc``
and ``orthanc-dicomweb`` packages, default storage settings): start it on an empty directory, push
every file with dcmtk ``storescu`` over 2 associations (``TCP_NODELAY=1`` in the client's
environment) decile by decile, so the rate of the first and the last 10 % can be compared; restart
it; run every search once (cold: the first after the restart), then ``--runs`` times more (warm,
median). C-FIND with a pynetdicom client (TCP_NODELAY; association, query, responses counted,
release), QIDO-RS with ``requests`` on one keep-alive session. Memory: PSS of the server's process tree (idle after
start, after the push, after the searches; bench/cstore.py ``tree_pss_bytes``).

Searches: ``PatientName=SMITH*`` (all matches, and QIDO ``limit=101``), ``*SON*``, exact
``PatientID``, a ``StudyDate`` range, the OHIF study list (``limit=101&offset=0&
fuzzymatching=false&includefield=00081030,00080060``) and fuzzy ``doe`` (QIDO ``fuzzymatching=
true``; Orthanc ignores the parameter and answers exact matching of ``doe``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cstore import tree_pss_bytes  # noqa: E402
from tests.conftest import free_port, start_server  # noqa: E402

AET = "PACS"

# The most frequent US surnames (2010 census) with their share of the population, per 100,000.
SURNAMES = [
    ("SMITH", 828), ("JOHNSON", 655), ("WILLIAMS", 550), ("BROWN", 487), ("JONES", 483),
    ("GARCIA", 395), ("MILLER", 381), ("DAVIS", 375), ("RODRIGUEZ", 370), ("MARTINEZ", 359),
    ("HERNANDEZ", 352), ("LOPEZ", 292), ("GONZALEZ", 284), ("WILSON", 273), ("ANDERSON", 266),
    ("THOMAS", 259), ("TAYLOR", 256), ("MOORE", 245), ("JACKSON", 240), ("MARTIN", 239),
    ("LEE", 232), ("PEREZ", 225), ("THOMPSON", 224), ("WHITE", 223), ("HARRIS", 203),
    ("SANCHEZ", 200), ("CLARK", 182), ("RAMIREZ", 180), ("LEWIS", 176), ("ROBINSON", 175),
    ("WALKER", 173), ("YOUNG", 163), ("ALLEN", 162), ("KING", 161), ("WRIGHT", 159),
    ("SCOTT", 155), ("TORRES", 155), ("NGUYEN", 153), ("HILL", 152), ("FLORES", 151),
    ("GREEN", 149), ("ADAMS", 148), ("NELSON", 147), ("BAKER", 146), ("HALL", 141),
    ("RIVERA", 140), ("CAMPBELL", 138), ("MITCHELL", 137), ("CARTER", 136), ("ROBERTS", 135),
    ("SMITHSON", 12), ("SMITHERS", 8), ("SMITHWICK", 3), ("DOE", 60), ("DOERR", 4),
    ("PETERSON", 111), ("JACOBSON", 40), ("ERICKSON", 60), ("HANSON", 50), ("LARSON", 55),
]
GIVEN = ["JAMES", "MARY", "JOHN", "PATRICIA", "ROBERT", "JENNIFER", "MICHAEL", "LINDA", "WILLIAM",
         "ELIZABETH", "DAVID", "BARBARA", "RICHARD", "SUSAN", "JOSEPH", "JESSICA", "THOMAS", "SARAH",
         "CHARLES", "KAREN", "JANE", "JON", "ANNA", "LUIS", "MARIA", "WEI", "FATIMA", "OLGA", "YUKI",
         "AHMED", "PRIYA", "CARLOS", "SOFIA", "NOAH", "EMMA", "LIAM", "OLIVIA", "ETHAN", "AVA"]
_SYLLABLES = ["KA", "LO", "MER", "VIN", "DOR", "TAN", "BEL", "RO", "SEN", "WICK", "HAM", "FIELD",
              "STEIN", "BERG", "MAN", "TON", "LEY", "GAR", "NOR", "QUI", "ZA", "PEL", "VAR", "OS"]
_TAIL_SHARE = 0.55  # surnames outside the list above: about half of all people


def names(n: int, seed: int = 14) -> list[str]:
    """``n`` distinct ``FAMILY^GIVEN^M`` names over the surname distribution above."""
    rng = random.Random(seed)
    families, weights = zip(*SURNAMES, strict=True)
    out: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < n:
        if rng.random() < _TAIL_SHARE:
            family = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
        else:
            family = rng.choices(families, weights)[0]
        name = f"{family}^{rng.choice(GIVEN)}^{chr(65 + rng.randrange(26))}"
        if name not in out:
            out.add(name)
            ordered.append(name)
    return ordered


def generate(folder: Path, n: int) -> dict[str, str]:
    """One Part 10 file per patient under ``folder/<decile>/``; returns facts the searches need."""
    from pydicom.uid import generate_uid

    from tests.dicomgen import make_image

    rng = random.Random(1414)
    all_names = names(n)
    known_id = ""
    for i, name in enumerate(all_names):
        decile = folder / f"{i * 10 // n:02d}" / f"{i % 2}"
        decile.mkdir(parents=True, exist_ok=True)
        year = 2005 + rng.randrange(20)
        date = f"{year}{1 + rng.randrange(12):02d}{1 + rng.randrange(28):02d}"
        pid = f"SC{i:07d}"
        if i == n // 2:
            known_id = pid
        ds = make_image(patient_id=pid, patient_name=name, study_uid=generate_uid(),
                        modality="MR", rows=16, columns=16, study_date=date,
                        accession=f"A{i:08d}", study_description=rng.choice(
                            ["MR Brain", "MR Knee", "MR Spine", "MR Abdomen"]),
                        birth_date=f"{1930 + rng.randrange(80)}0101", sex=rng.choice("MF"))
        ds.save_as(decile / f"{i:07d}.dcm", enforce_file_format=True)
    smith = sum(1 for x in all_names if x.startswith("SMITH"))
    son = sum(1 for x in all_names if "SON" in x)
    doe = sum(1 for x in all_names if any(w.startswith("DOE") for w in x.split("^")))
    return {"patient_id": known_id, "smith": str(smith), "son": str(son), "doe": str(doe), "n": str(n)}


# -- servers ---------------------------------------------------------------------------------------

class Ours:
    name = "pacs"

    def __init__(self, base: Path):
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.srv = None

    def start(self) -> None:
        # retention_years: the bench's study dates go back 20 years, and `pacs serve` applies
        # retention a minute after it starts (it shredded a tenth of the patients mid-run once)
        self.srv = start_server(self.base, PACS_DIMSE_WORKERS="2", PACS_AE_TITLE=AET,
                                PACS_RETENTION_YEARS="500")
        self.dicom_port, self.root = self.srv.dicom_port, self.srv.dicomweb_url
        self.pid = self.srv.proc.pid

    def stop(self) -> None:
        self.srv.stop()

    def count(self) -> int:
        from sqlalchemy import func, select

        from storage.index.models import Instance

        archive = self.srv.archive()
        try:
            with archive.sessions() as s:
                return int(s.scalar(select(func.count()).select_from(Instance)) or 0)
        finally:
            archive.close()


class Orthanc:
    name = "orthanc"

    def __init__(self, base: Path):
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.dicom_port, self.http = free_port(), free_port()
        storage = base / "orthanc-db"
        config = {
            "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "DicomAet": AET, "DicomPort": self.dicom_port, "HttpPort": self.http,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True, "Plugins": ["/usr/share/orthanc/plugins"],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.http}",
                         "Ssl": False},
        }
        self.cfg = base / "orthanc.json"
        self.cfg.write_text(json.dumps(config))
        self.root = f"http://127.0.0.1:{self.http}/dicom-web"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.base / "orthanc.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(["Orthanc", str(self.cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, TCP_NODELAY="1"))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.http}/system", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def count(self) -> int:
        return int(requests.get(f"http://127.0.0.1:{self.http}/statistics", timeout=60)
                   .json()["CountInstances"])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


# -- work ------------------------------------------------------------------------------------------

def push(server, folder: Path) -> list[tuple[int, float]]:
    """Every decile over 2 associations; (files, seconds) per decile."""
    out = []
    env = dict(os.environ, TCP_NODELAY="1")
    for decile in sorted(p for p in folder.iterdir() if p.is_dir()):
        halves = sorted(p for p in decile.iterdir() if p.is_dir())
        count = sum(1 for h in halves for _ in h.iterdir())
        t = time.perf_counter()
        procs = [subprocess.Popen(["storescu", "-aec", AET, "-aet", "BENCH", "-nh", "+sd",
                                   "127.0.0.1", str(server.dicom_port), str(h)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for h in halves]
        for p in procs:
            text, _ = p.communicate(timeout=3600)
            if p.returncode != 0 or b"E: " in text:
                raise RuntimeError(f"storescu failed: {text.decode(errors='replace')[-1500:]}")
        out.append((count, time.perf_counter() - t))
    return out


def cfind(port: int, *keys: str) -> tuple[float, int]:
    """One C-FIND (Study Root, STUDY level) from a pynetdicom client with TCP_NODELAY on its socket:
    association, query, every response, release (dcmtk ``findscu`` adds ~100 ms of its own start-up
    on this machine, the same for both servers, which hid the servers' part)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for kw in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyDescription"):
        setattr(ds, kw, "")
    for k in keys:
        kw, _, value = k.partition("=")
        setattr(ds, kw, value)
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(FIND)
    t = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    if not assoc.is_established:
        raise RuntimeError("C-FIND association refused")
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 0
    for status, _identifier in assoc.send_c_find(ds, FIND):
        if status and status.Status in (0xFF00, 0xFF01):
            n += 1
        elif not status or status.Status != 0:
            raise RuntimeError(f"C-FIND failed: {status}")
    assoc.release()
    return time.perf_counter() - t, n


def qido(session: requests.Session, root: str, query: str) -> tuple[float, int]:
    t = time.perf_counter()
    r = session.get(root + "/studies?" + query, headers={"Accept": "application/dicom+json"},
                    timeout=600)
    r.raise_for_status()
    n = len(r.json()) if r.content else 0
    return time.perf_counter() - t, n


def searches(facts: dict[str, str]) -> list[tuple[str, str, tuple[str, ...] | str]]:
    pid = facts["patient_id"]
    return [
        ("SMITH*", "C-FIND", ("PatientName=SMITH*",)),
        ("SMITH*", "qido", "PatientName=SMITH*"),
        ("SMITH* limit=101", "qido", "PatientName=SMITH*&limit=101"),
        ("*SON*", "C-FIND", ("PatientName=*SON*",)),
        ("*SON* limit=101", "qido", "PatientName=*SON*&limit=101"),
        ("PatientID exact", "C-FIND", (f"PatientID={pid}",)),
        ("PatientID exact", "qido", f"PatientID={pid}"),
        ("StudyDate range", "C-FIND", ("StudyDate=20100101-20100131",)),
        ("StudyDate range", "qido", "StudyDate=20100101-20100131"),
        ("OHIF study list", "qido", "limit=101&offset=0&fuzzymatching=false"
                                    "&includefield=00081030%2C00080060"),
        ("fuzzy doe", "qido", "PatientName=doe&fuzzymatching=true"),
    ]


def run_searches(server, facts: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with requests.Session() as session:
        plan = searches(facts)
        for label, kind, arg in plan:  # cold: the first of each after the restart
            fn = (lambda a=arg: cfind(server.dicom_port, *a)) if kind == "C-FIND" else (
                lambda a=arg: qido(session, server.root, a))
            seconds, n = fn()
            out[f"{kind} {label}"] = {"cold": seconds, "matches": n}
        for label, kind, arg in plan:
            fn = (lambda a=arg: cfind(server.dicom_port, *a)) if kind == "C-FIND" else (
                lambda a=arg: qido(session, server.root, a))
            out[f"{kind} {label}"]["warm"] = statistics.median(fn()[0] for _ in range(runs))
    return out


def measure(server, folder: Path, facts: dict[str, str], runs: int) -> dict:
    server.start()
    time.sleep(2)
    idle = tree_pss_bytes(server.pid)
    deciles = push(server, folder)
    after_push = tree_pss_bytes(server.pid)
    stored = server.count()
    server.stop()
    server.start()
    time.sleep(2)
    restarted = tree_pss_bytes(server.pid)
    found = run_searches(server, facts, runs)
    after = tree_pss_bytes(server.pid)
    server.stop()
    total = sum(n for n, _ in deciles)
    seconds = sum(s for _, s in deciles)
    mb = 1024 * 1024
    return {"stored": stored, "ingest": total / seconds, "first10": deciles[0][0] / deciles[0][1],
            "last10": deciles[-1][0] / deciles[-1][1], "pss_idle": idle / mb,
            "pss_after_push": after_push / mb, "pss_restarted": restarted / mb,
            "pss_after_searches": after / mb, "searches": found}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=200_000)
    ap.add_argument("--servers", default="pacs,orthanc")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="keep the generated files (and reuse them) in this directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        base = Path(tmp)
        data = (args.keep.absolute() if args.keep else base / "files")
        facts_file = data / "facts.json"
        if facts_file.is_file() and json.loads(facts_file.read_text())["n"] == str(args.patients):
            facts = json.loads(facts_file.read_text())
        else:
            t = time.perf_counter()
            facts = generate(data, args.patients)
            facts_file.write_text(json.dumps(facts))
            print(f"generated {args.patients} files in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        results = {}
        for name in args.servers.split(","):
            server = Ours(base / "pacs") if name == "pacs" else Orthanc(base / "orthanc")
            results[name] = measure(server, data, facts, args.runs)
            print(f"{name}: done", file=sys.stderr)
    report(args.patients, facts, results)


def report(n: int, facts: dict[str, str], results: dict[str, dict]) -> None:
    names_ = list(results)
    two = len(names_) == 2
    print(f"\n{n} single-study patients (SMITH*: {facts['smith']}, *SON*: {facts['son']}, "
          f"fuzzy doe: {facts['doe']})\n")
    print("| measure | " + " | ".join(names_) + (" | ratio |" if two else " |"))
    print("|---" * (len(names_) + 1 + two) + "|")

    def row(label: str, values: list[float], fmt: str = "{:.0f}") -> None:
        line = f"| {label} | " + " | ".join(fmt.format(v) for v in values)
        if two:
            line += f" | {values[0] / values[1]:.2f}×" if values[1] else " | -"
        print(line + " |")

    r = [results[k] for k in names_]
    row("instances stored", [x["stored"] for x in r])
    row("C-STORE /s, one new patient per study, 2 assoc.", [x["ingest"] for x in r])
    row("first 10 % /s", [x["first10"] for x in r])
    row("last 10 % /s", [x["last10"] for x in r])
    for key in r[0]["searches"]:
        matches = "/".join(str(int(x["searches"][key]["matches"])) for x in r)
        for phase in ("cold", "warm"):
            row(f"{key} ({matches} matches), {phase}, ms", [x["searches"][key][phase] * 1000 for x in r],
                "{:.1f}")
    for key, label in (("pss_idle", "PSS idle, MB"), ("pss_after_push", "PSS after the push, MB"),
                       ("pss_restarted", "PSS after restart, MB"),
                       ("pss_after_searches", "PSS after the searches, MB")):
        row(label, [x[key] for x in r])


if __name__ == "__main__":
    main()
