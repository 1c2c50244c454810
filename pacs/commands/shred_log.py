"""``pacs shred-log``: the key ids of shredded patients (no PHI), for ``pacs restore --shred-log``."""

from __future__ import annotations

import click

from pacs.cli import Context, pass_ctx


@click.command(name="shred-log")
@pass_ctx
def cli(ctx: Context) -> None:
    """Print the shred log, one key id a line. Keep a copy beside your backups after each shred."""
    from storage.backup import shred_log

    click.echo("# pacs shred log: key ids of shredded patients, oldest first")
    for key_id in shred_log(ctx.archive()):
        click.echo(key_id)
