"""The access list on the patient page (issue 19 part 4): who read or changed the held records.

From :func:`storage.access_trail.trail` (the archive's audit events, addresses cut to /24 or /48),
newest first, at most :data:`storage.access_trail.MAX_EVENTS`.
"""

from __future__ import annotations

from html import escape

from storage.access_trail import trail

from .. import context
from .record import held


def section() -> str:
    rows = []
    for a in trail(context.archive(), held()):
        rows.append(f'<tr class="access"><td>{a.at:%Y-%m-%d %H:%M:%S}</td><td>{escape(a.who)}</td>'
                    f"<td>{escape(a.what)}</td><td>{escape(a.outcome)}</td>"
                    f"<td>{escape(a.where)}</td></tr>")
    if not rows:
        return "<h2>Who accessed your record</h2><p>No accesses are recorded.</p>"
    return ("<h2>Who accessed your record</h2><table id=\"accesses\"><thead><tr><th>When (UTC)</th>"
            "<th>Who</th><th>What</th><th>Outcome</th><th>From (network)</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")
