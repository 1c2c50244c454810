"""``pacs export``: a patient's whole record as one encrypted file (OpenPGP or age)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pacs.cli import Context, pass_ctx
from storage.errors import ArchiveError


@click.command(name="export")
@click.option("--patient-id", required=True)
@click.option("--issuer", default="")
@click.option("--provider", default=None, help="The provider whose patient it is (default: default).")
@click.option("--format", "fmt", type=click.Choice(["gpg", "age", "zip"]), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--passcode-stdin", is_flag=True, help="Read the passcode from standard input.")
@pass_ctx
def cli(ctx: Context, patient_id: str, issuer: str, provider: str | None, fmt: str, out: Path,
        passcode_stdin: bool) -> None:
    """Write PATIENT's record: a PS3.10 media zip (DICOMDIR), encrypted with a passcode.

    Without --passcode-stdin the passcode is asked for (not echoed). 'zip' is unencrypted.
    """
    from storage.export import ExportError
    from storage.export.record import write_record

    passcode: str | None = None
    if fmt != "zip":
        if passcode_stdin:
            passcode = sys.stdin.readline().rstrip("\r\n")
        else:
            passcode = click.prompt("passcode", hide_input=True, confirmation_prompt=True)
        if not passcode:
            raise click.ClickException("an empty passcode is refused")
    archive = ctx.archive()
    try:
        from storage.providers import provider_ref

        ref = archive.find_patient(patient_id, issuer, provider_ref(archive, provider))
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    tmp = out.with_name(out.name + ".part")
    try:
        with open(tmp, "wb") as fh:
            summary = write_record(archive, fh, ref, fmt=fmt, passcode=passcode, actor="pacs export",
                                   origin=os.uname().nodename)
        os.replace(tmp, out)
    except (ArchiveError, ExportError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(f"export failed: {exc}") from None
    click.echo(f"wrote {out}: {summary.instances} instance(s), {summary.originals} original(s), "
               f"{out.stat().st_size} bytes")
