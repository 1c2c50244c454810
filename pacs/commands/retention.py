"""``pacs retention apply [--dry-run]``: crypto-shred patients past retention (run daily by ``pacs serve``).

The daily run also removes orphan blobs (written by a store that was interrupted before its index
commit, over an hour ago): ``pacs serve`` sweeps them at start, and a worker that crashed and was
started again by the supervisor would otherwise leave its orphans until the next restart.
"""

from __future__ import annotations

import os

import click

from pacs.cli import Context, pass_ctx


@click.group(name="retention")
def cli() -> None:
    """Retention of patient records (retention_years after the last visit)."""


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list the patients that are due.")
@pass_ctx
def apply(ctx: Context, dry_run: bool) -> None:
    """Shred every patient whose last visit is older than retention_years (key destroyed first).

    Then remove orphan blobs older than an hour (not with --dry-run)."""
    from storage.retention import apply as run

    archive = ctx.archive()
    due = run(archive, dry_run=dry_run, actor="pacs retention", origin=os.uname().nodename)
    verb = "due" if dry_run else "shredded"
    for p in due:
        click.echo(f"{verb}: patient {p.patient_ref} (last visit {p.last_visit}, {p.instances} instance(s))")
    click.echo(f"{len(due)} patient(s) {verb}")
    if not dry_run:
        orphans = archive.sweep_orphans()
        if orphans:
            click.echo(f"removed {orphans} orphan blob(s) left by interrupted stores")
