"""``pacs retention apply [--dry-run | --confirm [--yes]]``: crypto-shred patients past retention.

The clock and the rails are in storage/retention.py. ``pacs serve`` runs ``apply --scheduled``
daily (pacs/serve.py): over ``retention_max_per_run`` it writes one log line and an audit alarm and
shreds nothing; a person then looks (``--dry-run``) and goes past it with ``--confirm``.

The daily run also removes orphan blobs (written by a store that was interrupted before its index
commit, over an hour ago): ``pacs serve`` sweeps them at start, and a worker that crashed and was
started again by the supervisor would otherwise leave its orphans until the next restart.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import click

from pacs.cli import Context, pass_ctx
from storage import cluster

if TYPE_CHECKING:
    from storage.retention import Due

log = logging.getLogger("pacs.retention")


@click.group(name="retention")
def cli() -> None:
    """Retention of patient records (retention_years after the latest study date or receipt)."""


def _line(verb: str, p: Due) -> str:
    study = (f"{p.last_study_date[:4]}-{p.last_study_date[4:6]}-{p.last_study_date[6:]}"
             if p.last_study_date else "-")
    return (f"{verb}: patient {p.patient_ref} (last study {study}, last receipt "
            f"{p.last_received:%Y-%m-%d}, due since {p.due_since:%Y-%m-%d}, "
            f"{p.instances} instance(s))")


@cli.command()
@click.option("--dry-run", is_flag=True,
              help="Only list the due patients: internal reference and dates, nothing identifying.")
@click.option("--confirm", is_flag=True,
              help="Shred every due patient even past retention_max_per_run (asks first).")
@click.option("--yes", is_flag=True, help="With --confirm: do not ask.")
@click.option("--scheduled", is_flag=True, hidden=True)  # the daily run of pacs serve
@click.option("--today", type=click.DateTime(["%Y-%m-%d"]), hidden=True)  # tests: a clock moved on
@pass_ctx
def apply(ctx: Context, dry_run: bool, confirm: bool, yes: bool, scheduled: bool,
          today: datetime | None) -> None:
    """Shred every patient past retention (key destroyed first), then remove orphan blobs older
    than an hour. Refuses, shredding nothing, when more are due than retention_max_per_run."""
    from storage import retention

    if yes and not confirm:
        raise click.UsageError("--yes goes with --confirm")
    if dry_run and confirm:
        raise click.UsageError("--dry-run and --confirm exclude each other")
    archive = ctx.archive()
    day = today.date() if today else retention.today_utc()
    actor = "retention schedule" if scheduled else (
        "pacs retention --confirm" if confirm else "pacs retention")
    origin = archive.settings.node_name or os.uname().nodename
    if dry_run:
        due = retention.due(archive, day)
        allowed, patients = retention.max_per_run(archive)
        for p in due:
            click.echo(_line("due", p))
        click.echo(f"{len(due)} patient(s) due; one run may shred {allowed} of {patients} "
                   f"(retention_max_per_run = {archive.settings.retention_max_per_run!r})")
        if len(due) > allowed:
            click.echo("a scheduled run would refuse and shred nothing; "
                       "`pacs retention apply --confirm` shreds them")
        return
    limit = None
    if confirm:
        limit = retention.count_due(archive, day)
        if limit and not yes:
            click.confirm(f"Shred {limit} patient(s)? Their keys are destroyed; this cannot be "
                          "undone", abort=True)
    with cluster.job_lock(archive.write_engine, "retention") as mine:  # once across the cluster
        if not mine:
            if scheduled:
                log.info("retention: another node is running it now")
                return
            raise click.ClickException("a retention run is going on on another node now")
        if scheduled and archive.settings.node_name and cluster.ran_elsewhere(
                archive, actor, origin, timedelta(hours=20)):
            log.info("retention: another node ran it today")  # its daily run serves the cluster
            return
        try:
            shredded = retention.apply(archive, today=day, limit=limit, actor=actor, origin=origin)
        except retention.OverLimit as exc:
            if scheduled:  # the one line in the server log; the alarm is in the audit trail
                log.error("retention: %s", exc)
                sys.exit(3)
            raise click.ClickException(str(exc)) from None
    for p in shredded:
        click.echo(_line("shredded", p))
    click.echo(f"{len(shredded)} patient(s) shredded")
    with cluster.job_lock(archive.write_engine, "orphan-sweep") as mine:
        orphans = archive.sweep_orphans() if mine else 0
    if orphans:
        click.echo(f"removed {orphans} orphan blob(s) left by interrupted stores")
