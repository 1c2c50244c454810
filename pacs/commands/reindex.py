"""``pacs reindex [--restart]``: blind-index tokens for an archive stored before they existed.

Resumes where an interrupted run stopped (storage/reindex.py); ``--restart`` indexes everything
again. The server may keep running meanwhile: searches read every row until the run is done.
"""

from __future__ import annotations

import sys
from typing import Never

import click

from pacs.cli import Context, pass_ctx


@click.command(name="reindex")
@click.option("--restart", is_flag=True, help="Index every row again, not only what is left.")
@click.option("--batch", default=500, show_default=True, help="Rows per transaction.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@pass_ctx
def cli(ctx: Context, restart: bool, batch: int, quiet: bool) -> None:
    """Compute the blind indexes (name, ID and description search tokens) of stored rows."""
    from tqdm import tqdm

    from storage.reindex import reindex

    archive = ctx.archive()
    bars: dict[str, tqdm[Never]] = {}  # progress bars over no iterable

    def progress(level: str, done: int, total: int) -> None:
        bar = bars.get(level)
        if bar is None:
            bar = bars[level] = tqdm(total=total, unit="row", desc=level.lower(),
                                     disable=quiet or not sys.stderr.isatty())
        bar.update(done - bar.n)

    counts = reindex(archive, restart=restart, batch=max(1, batch), progress=progress)
    for bar in bars.values():
        bar.close()
    click.echo("indexed " + ", ".join(f"{n} {level.lower()} row(s)" for level, n in counts.items()))
