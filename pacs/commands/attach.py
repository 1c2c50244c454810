"""``pacs attach FILE...``: add documents, photos, videos, dictations and notes to a patient.

Each file goes through :func:`storage.ingest.attach` (sniff, encapsulate as DICOM, store). Files
that are not notes are stored first, so a text note naming another file of the same call (by its
file name) or any stored object (by SOP Instance UID) gets an SR reference to it. With
``--new-study`` all files of the call go into one new study.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pacs.cli import Context
    from storage.archive import StoreResult


def _is_note(path: Path) -> bool:
    return path.suffix.lower() in (".txt", ".text", ".rtf")


@click.command(name="attach")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--patient-id", required=True, help="Patient ID (exact).")
@click.option("--patient-name", default=None, help="Needed for a patient the archive does not know (Family^Given).")
@click.option("--issuer", default="", help="Issuer of Patient ID.")
@click.option("--birth-date", default="", help="YYYYMMDD, for a new patient.")
@click.option("--sex", default="", type=click.Choice(["", "M", "F", "O"]), help="For a new patient.")
@click.option("--study", "study_uid", default=None, help="Study Instance UID of an existing study.")
@click.option("--new-study", is_flag=True, help="Put the files in a new study (the default).")
@click.option("--description", default="", help="Study Description of the new study.")
@click.option("--title", default=None, help="Document title (default: the file name).")
@click.option("--reference", "references", multiple=True,
              help="SOP Instance UID a PDF or note refers to (repeatable).")
@click.option("--about", "about", default=None, metavar="STUDY_UID",
              help="Study Instance UID of this patient's study the files discuss (recorded as a "
                   "Referenced Study Sequence; in notes also as an SR content item).")
@click.option("--provider", default=None, help="The provider whose patient it is (default: default).")
@click.pass_obj
def cli(ctx: Context, files: tuple[Path, ...], patient_id: str, patient_name: str | None, issuer: str,
        birth_date: str, sex: str, study_uid: str | None, new_study: bool, description: str,
        title: str | None, references: tuple[str, ...], about: str | None,
        provider: str | None) -> None:
    """Store FILE... (PDF, photos incl. HEIC and multi-page scans, MP4/MOV video, WAV/MP3/M4A/Ogg
    dictations, text, RTF) for a patient, each stored or refused."""
    from storage.artifacts import ArtifactError  # imported here: keeps other `pacs` verbs fast
    from storage.errors import ArchiveError
    from storage.ingest import attach_all

    if study_uid and new_study:
        raise click.UsageError("give either --study UID or --new-study, not both")
    from storage.providers import provider_ref

    archive = ctx.archive(create_key=True)
    try:
        tenant = provider_ref(archive, provider)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    origin = os.uname().nodename
    ordered = sorted(files, key=_is_note)  # notes last, so they can name the others
    stored: dict[str, StoreResult] = {}
    refused = 0
    for path in ordered:
        try:
            results = attach_all(archive, path, filename=path.name, patient_id=patient_id,
                                 patient_name=patient_name, issuer=issuer, birth_date=birth_date,
                                 sex=sex, study_uid=study_uid, new_study_description=description,
                                 title=title, references=references, about=about,
                                 named_files=stored, actor="pacs attach", origin=origin,
                                 provider=tenant)
        except (ArchiveError, ArtifactError, OSError) as exc:
            refused += 1
            click.echo(f"{path}: refused: {exc}")
            continue
        result = results[0]
        stored[path.name] = result
        study_uid = result.study_uid  # the rest of the call goes into the same study
        click.echo(f"{path}: {result.status} {result.sop_instance_uid} in study {result.study_uid}"
                   + (f" (page 1 of {len(results)})" if len(results) > 1 else ""))
        for page, more in enumerate(results[1:], start=2):
            click.echo(f"{path}: page {page}: {more.status} {more.sop_instance_uid}")
    click.echo(f"stored {len(stored)}, refused {refused}")
    if refused:
        sys.exit(1)
