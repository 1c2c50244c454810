"""pacs.dimse is the one seam with pynetdicom's internals.

- No module of ``pacs/`` (outside ``pacs/dimse/``), ``dicomweb/`` or ``bench/`` reads or writes a
  pynetdicom private name: no import of a private pynetdicom module or name, no ``x._name``
  attribute other than on ``self``/``cls``, no ``getattr``/``setattr``/``hasattr`` of a ``"_name"``.
  (A static check cannot know an object's type, so it refuses every private attribute outside
  the seam, whoever owns it; ``ALLOWED`` lists the few that are not pynetdicom's.)
- On a pynetdicom the patches do not know, ``install`` patches nothing, says so once, and a later
  call says nothing more; a changed source line refuses every patch, not just its own.
- ``pyproject.toml`` pins the pynetdicom the patches were written for.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pydicom
import pynetdicom
import pytest

from pacs.dimse.guard import PYNETDICOM_VERSION

ROOT = Path(__file__).resolve().parent.parent
SEAM = ROOT / "pacs" / "dimse"
SCANNED = ("pacs", "dicomweb", "bench")
#: Private attributes outside the seam that are not pynetdicom's: (base name, attribute).
ALLOWED = {("os", "_exit")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []

    def say(node: ast.AST, what: str) -> None:
        out.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pynetdicom") and any(map(_private, alias.name.split("."))):
                    say(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            if any(map(_private, (node.module or "").split("."))):
                say(node, f"imports from {node.module}")
            for alias in node.names:
                if _private(alias.name):
                    say(node, f"imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if base not in ("self", "cls") and (base, node.attr) not in ALLOWED:
                say(node, f"uses the private attribute .{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            say(node, f"{node.func.id}(..., {node.args[1].value!r})")
    return out


def scanned_files() -> list[Path]:
    files = [p for top in SCANNED for p in (ROOT / top).rglob("*.py") if SEAM not in p.parents]
    assert len(files) > 40  # the scan sees the code base
    return files


def test_no_pynetdicom_private_name_outside_the_seam():
    found = [v for p in scanned_files() for v in violations(p)]
    assert found == [], "\n".join(found)


def test_the_check_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from pynetdicom import _config\nimport pynetdicom._globals\n"
                   "from pynetdicom.dul import _x\n"
                   "def f(event):\n    event.assoc.dul._idle_timer.restart()\n"
                   "    setattr(event.assoc, '_pacs_x', 1)\n    self._fine = 1\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = violations(bad)
    finally:
        ROOT = saved
    assert len(found) == 5, found


def test_pyproject_pins_what_the_patches_were_written_for():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"pynetdicom=={PYNETDICOM_VERSION}" in deps
    assert f"pydicom=={pydicom.__version__}" in deps
    assert pynetdicom.__version__ == PYNETDICOM_VERSION  # the installed one is the pinned one


def _in_a_fresh_process(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_an_unknown_pynetdicom_is_left_stock_with_one_warning():
    r = _in_a_fresh_process(
        "import logging, pynetdicom\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "pynetdicom.__version__ = '3.1.0'\n"
        "from pacs import dimse\n"
        "from pynetdicom import dul\n"
        "from pynetdicom.transport import AssociationSocket\n"
        "print(dimse.install(), dimse.install(), dimse.active())\n"
        "print(AssociationSocket.recv.__module__, dul.DULServiceProvider._read_pdu_data.__module__)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "False", "pynetdicom.transport", "pynetdicom.dul"]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "3.1.0" in warnings[0] and PYNETDICOM_VERSION in warnings[0], r.stderr


@pytest.mark.parametrize("changed", ["the association reactor", "PresentationContext"])
def test_a_changed_internal_refuses_every_patch(changed: str):
    """Patches are all or nothing: one failed source check leaves even the unrelated ones out."""
    change = {
        "the association reactor": "from pynetdicom import association\n"
                                   "association.Association._run_reactor = lambda self: None\n",
        "PresentationContext": "from pynetdicom.presentation import PresentationContext\n"
                               "PresentationContext.__deepcopy__ = lambda self, memo: self\n",
    }[changed]
    r = _in_a_fresh_process(
        "import logging\nlogging.basicConfig()\n" + change +
        "from pacs import dimse\n"
        "from pynetdicom.transport import AssociationSocket\n"
        "print(dimse.install(), AssociationSocket.recv.__module__)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "pynetdicom.transport"]
    assert r.stderr.count("WARNING") == 1, r.stderr


def test_the_pinned_pynetdicom_is_patched():
    r = _in_a_fresh_process(
        "from pacs import dimse\n"
        "from pynetdicom.transport import AssociationSocket\n"
        "print(dimse.install(), dimse.active(), AssociationSocket.recv.__module__)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "pacs.dimse.sockets"]
    assert "WARNING" not in r.stderr
