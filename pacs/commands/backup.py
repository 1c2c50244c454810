"""``pacs backup DIR``: a consistent online snapshot of the archive (storage/backup.py)."""

from __future__ import annotations

from pathlib import Path

import click

from pacs.cli import Context, pass_ctx


@click.command(name="backup")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--with-master-key", is_flag=True,
              help="Also copy the master key into the backup (then keep the backup as safe as the key).")
@pass_ctx
def cli(ctx: Context, dest: Path, with_master_key: bool) -> None:
    """Write index, wrapped keys, blobs and the shred log into DEST while the server runs.

    The master key is not copied unless asked: without it the backup cannot be read."""
    from storage.backup import BackupError, backup

    try:
        r = backup(ctx.archive(), dest, with_master_key=with_master_key)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up {r.instances} instance(s), {r.blobs} blob file(s), {r.bytes} bytes "
               f"into {dest}" + (" with the master key" if r.master_key_included else
                                 "; the master key is NOT in it: keep its own copy"))
