"""README.txt and INDEX.HTM of an export: what is inside and how to open it (PS3.12 hints).

Hand-written with the standard library (``html.escape``): two small static pages do not
justify a template engine dependency in ``storage/``.
"""

from __future__ import annotations

import html
from urllib.parse import quote

from storage.export.catalog import Catalog


def _fmt_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def readme_text(catalog: Catalog, patient_label: str) -> str:
    """Return README.txt (CRLF line ends so every system's text viewer shows it right)."""
    studies = sum(len(p.studies) for p in catalog.patients.values())
    lines = [
        f"Medical images and documents of {patient_label}",
        "",
        "What is inside",
        f"  DICOM/       {catalog.instance_count} DICOM files from {studies} studies, exactly as the archive stored them",
        "  DICOMDIR     the directory of the DICOM files (DICOM PS3.10 media layout)",
        f"  ORIGINALS/   {len(catalog.originals)} documents, photos or other files in their original form",
        "  INDEX.HTM    an overview to open in any web browser",
        "  README.txt   this file",
        "",
        "How to open it",
        "  1. Unpack the whole folder first (do not open files from inside the zip).",
        "  2. Open INDEX.HTM in a web browser to see what is there.",
        "  3. For the images, use a DICOM viewer and open the folder or the DICOMDIR file, e.g.",
        "     Weasis (Windows, macOS, Linux), Horos or OsiriX Lite (macOS), MicroDicom (Windows),",
        "     or a web viewer that works offline. The file names like IMG00001 have no extension:",
        "     this is what the DICOM standard requires on media.",
        "  4. Files in ORIGINALS/ open with ordinary programs (PDF reader, image viewer...).",
        "",
        "Keep this data private: it is your medical record. Anyone with these files can read them.",
    ]
    return "\r\n".join(lines) + "\r\n"


def index_html(catalog: Catalog, patient_label: str) -> str:
    """Return INDEX.HTM: patients, studies, series and files with relative links."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Medical record of {e(patient_label)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}"
        "li a{margin-right:.5em}h3{margin-bottom:.2em}</style></head><body>",
        f"<h1>Medical record of {e(patient_label)}</h1>",
        "<p>Open the DICOM files with a DICOM viewer (see README.txt). "
        '<a href="README.txt">README</a> &middot; <a href="DICOMDIR">DICOMDIR</a></p>',
    ]
    for patient in catalog.patients.values():
        out.append(f"<h2>{e(patient.patient_name or 'Patient')} ({e(patient.patient_id)})</h2>")
        for study in patient.studies.values():
            out.append(
                f"<h3>Study {e(_fmt_date(study.date))} {e(study.description)}</h3><ul>"
            )
            for series in study.series.values():
                links = " ".join(
                    f'<a href="{"/".join(i.file_id)}">{e(i.instance_number or i.file_id[-1])}</a>'
                    for i in series.instances
                )
                out.append(
                    f"<li>Series {e(series.number)} {e(series.modality)} {e(series.description)}"
                    f" &ndash; {len(series.instances)} file(s), "
                    f"{e(series.instances[0].sop_class_name)}<br>{links}</li>"
                )
            out.append("</ul>")
    if catalog.originals:
        out.append("<h2>Original documents</h2><ul>")
        for orig in catalog.originals:
            name = orig.path.split("/", 1)[1]
            out.append(f'<li><a href="{e(quote(orig.path))}">{e(name)}</a> ({e(orig.media_type)})</li>')
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
