"""The rooms of the code stay as designed (issue 15 part 2; developers' guide, "Project rules").

* storage/ is the core: it imports no web framework, no DICOM network library and no front door;
* its modules stay small (one job each);
* it speaks in domain errors (storage/errors.py), never in HTTP status codes: the front doors map.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

STORAGE = Path(__file__).resolve().parent.parent / "storage"
FORBIDDEN_IMPORTS = ("flask", "werkzeug", "pynetdicom", "dicomweb", "pacs")
MAX_LINES = 450
# an HTTP status as a number in code: an attribute/argument/comparison, not a size or a count
HTTP_STATUS = re.compile(r"\b(status(_code)?\s*(=|==)\s*[1-5][0-9]{2}\b|abort\(\s*[1-5][0-9]{2}\b)")


def _modules() -> list[Path]:
    return sorted(p for p in STORAGE.rglob("*.py") if "migrations" not in p.parts)


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_storage_imports_no_framework_network_library_or_front_door():
    found = {
        f"{path.relative_to(STORAGE.parent)}: {name}"
        for path in _modules()
        for name in _imported(ast.parse(path.read_text(), str(path)))
        if name.split(".")[0] in FORBIDDEN_IMPORTS
    }
    assert found == set()


def test_storage_modules_are_small():
    too_long = {str(p.relative_to(STORAGE.parent)): n for p in _modules()
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}


def test_storage_carries_no_http_status_codes():
    found = [f"{p.relative_to(STORAGE.parent)}:{i}: {line.strip()}"
             for p in _modules() for i, line in enumerate(p.read_text().splitlines(), 1)
             if HTTP_STATUS.search(line)]
    assert found == []


def test_the_layout_checks_see_what_they_look_for():
    """The checks above would fail on a module that broke the rules (they are not vacuous)."""
    assert _imported(ast.parse("import flask\nfrom werkzeug.exceptions import NotFound\n")) \
        == {"flask", "werkzeug.exceptions"}
    assert HTTP_STATUS.search("    status = 401")
    assert HTTP_STATUS.search("abort(404)")
    assert not HTTP_STATUS.search("_BATCH = 500")
    assert len(_modules()) > 20
