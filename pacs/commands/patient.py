"""``pacs patient shred``: crypto-shred one patient on request."""

from __future__ import annotations

import os

import click

from pacs.cli import Context, pass_ctx
from storage.errors import ArchiveError


@click.group(name="patient")
def cli() -> None:
    """Patient records."""


@cli.command()
@click.option("--patient-id", required=True)
@click.option("--issuer", default="")
@click.option("--provider", default=None, help="The provider whose patient it is (default: default).")
@click.option("--reason", default="request")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def shred(ctx: Context, patient_id: str, issuer: str, provider: str | None, reason: str,
          yes: bool) -> None:
    """Destroy the patient's key (nothing of theirs is readable after), then blobs, rows, letters."""
    from storage.retention import shred as run

    archive = ctx.archive()
    try:
        from storage.providers import provider_ref

        ref = archive.find_patient(patient_id, issuer, provider_ref(archive, provider))
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    if not yes:
        click.confirm(f"Shred patient {ref} for good?", abort=True)
    n = run(archive, ref, actor="pacs patient shred", origin=os.uname().nodename, reason=reason)
    click.echo(f"shredded patient {ref}: {n} object(s)")
