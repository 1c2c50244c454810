"""``pacs restore DIR``: bring a backup back into a new, empty archive; replay shred logs."""

from __future__ import annotations

from pathlib import Path

import click

from pacs.cli import Context, pass_ctx


@click.command(name="restore")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--shred-log", "shred_logs", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="A newer shred log (from `pacs shred-log` or a newer backup directory): the "
                   "patients it names are shredded again. Repeatable.")
@pass_ctx
def cli(ctx: Context, source: Path, shred_logs: tuple[Path, ...]) -> None:
    """Restore SOURCE into the archive the settings name (data_dir, database_url), which must be empty."""
    from storage.backup import BackupError, restore
    from storage.errors import KeyUnavailable

    try:
        r = restore(source, ctx.settings, shred_logs=shred_logs)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyUnavailable as exc:
        raise click.ClickException(f"the master key does not open this backup: {exc}") from None
    click.echo(f"restored {r.instances} instance(s), {r.blobs} blob file(s); "
               f"shred log replayed: {r.shredded} patient(s) shredded again")
