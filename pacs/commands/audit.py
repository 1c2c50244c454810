"""``pacs audit``: the audit trail (PS3.15 A.5 in spirit): who, what, which patient, when, where."""

from __future__ import annotations

from datetime import datetime

import click

from pacs.cli import Context, pass_ctx
from storage.errors import ArchiveError


@click.command(name="audit")
@click.option("--patient-id")
@click.option("--issuer", default="")
@click.option("--provider", default=None, help="The provider whose patient it is (default: default).")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y%m%d", "%Y-%m-%dT%H:%M:%S"]))
@click.option("--action")
@click.option("--limit", type=int, default=10000)
@pass_ctx
def cli(ctx: Context, patient_id: str | None, issuer: str, provider: str | None,
        since: datetime | None, action: str | None, limit: int) -> None:
    """Print audit events, oldest first (tab separated)."""
    archive = ctx.archive()
    ref = None
    if patient_id:
        try:
            from storage.providers import provider_ref

            ref = archive.find_patient(patient_id, issuer, provider_ref(archive, provider))
        except ArchiveError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo("at\taction\toutcome\tactor\tsource\tpatient\tstudy\tdetail")
    for e in archive.audit.events(patient_ref=ref, since=since, action=action, limit=limit):
        click.echo(f"{e.at:%Y-%m-%dT%H:%M:%S}\t{e.action}\t{e.outcome}\t{e.actor}\t{e.source}\t"
                   f"{e.patient_ref if e.patient_ref is not None else ''}\t{e.study_uid}\t{e.detail}")
