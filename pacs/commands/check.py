"""``pacs check``: verify the whole archive (storage/check.py); exits 1 with a report on any fault."""

from __future__ import annotations

import sys

import click

from pacs.cli import Context, pass_ctx


@click.command(name="check")
@click.option("--grace", default=3600.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds an unindexed blob may be a store in flight before it counts as an orphan.")
@click.option("--no-decrypt", is_flag=True, help="Only check that blobs exist with their sizes.")
@pass_ctx
def cli(ctx: Context, grace: float, no_decrypt: bool) -> None:
    """Index against blobs, counts against rows, every blob's authentication tags, every key.

    The report names rows and blobs by internal ids only, never patient values."""
    from storage.check import check

    report = check(ctx.archive(), grace_seconds=grace, verify=not no_decrypt)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)
