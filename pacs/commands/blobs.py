"""``pacs blobs migrate|repair|scrub|health``: move a file archive into a bucket; keep dispersed
blobs at full redundancy (storage/blobjobs.py). Each job resumes where an interrupted run stopped."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import click

from pacs.cli import Context, pass_ctx
from storage.errors import ArchiveError


def _report(counts: Mapping[str, int]) -> None:
    for name, n in sorted(counts.items()):
        click.echo(f"{name}: {n}")


@contextlib.contextmanager
def _once(ctx: Context, job: str) -> Iterator[Any]:
    """The archive, while this node alone runs ``job`` (a PostgreSQL advisory lock: storage/cluster.py)."""
    from storage import cluster

    archive = ctx.archive()
    with cluster.job_lock(archive.write_engine, f"blobs-{job}") as mine:
        if not mine:
            raise click.ClickException(f"`pacs blobs {job}` is running on another node now")
        yield archive


@click.group(name="blobs")
def cli() -> None:
    """The blob store: migration, repair, scrubbing."""


@cli.command()
@click.option("--to", "to", required=True, help="s3://bucket/prefix (endpoint and credentials from "
              "s3_* settings, or ?endpoint=URL in the address).")
@click.option("--limit", type=int, default=None, hidden=True, help="Stop after N copies.")
@pass_ctx
def migrate(ctx: Context, to: str, limit: int | None) -> None:
    """Copy every blob file into the bucket, verify each copy, then switch the running server."""
    from storage.blobjobs import migrate as run

    try:
        with _once(ctx, "migrate") as archive:
            counts = run(archive, to, limit=limit, progress=click.echo)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    _report(counts)
    if limit is None:
        click.echo(f"done: every blob is in {to.split('?')[0]}. Set blob_store = \"{to}\" in the "
                   "configuration; blob_dir can then be removed.")


@cli.command()
@click.option("--recorded", is_flag=True, help="Only blobs recorded as below full redundancy.")
@click.option("--restart", is_flag=True, help="Start from the beginning, not where the last run stopped.")
@pass_ctx
def repair(ctx: Context, recorded: bool, restart: bool) -> None:
    """Rewrite missing or corrupt shares from k good ones (dispersal)."""
    from storage.blobjobs import repair as run

    try:
        with _once(ctx, "repair") as archive:
            _report(run(archive, only_recorded=recorded, fresh=restart))
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.option("--rate", type=float, default=20.0, show_default=True, help="MB read per second.")
@click.option("--limit", type=int, default=None, hidden=True, help="Stop after N objects.")
@click.option("--restart", is_flag=True, help="Start from the beginning, not where the last run stopped.")
@pass_ctx
def scrub(ctx: Context, rate: float, limit: int | None, restart: bool) -> None:
    """Check every share's checksums at a bounded rate; queue repairs (dispersal)."""
    from storage.blobjobs import scrub as run

    try:
        with _once(ctx, "scrub") as archive:
            _report(run(archive, rate_mb=rate, limit=limit, fresh=restart))
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@pass_ctx
def health(ctx: Context) -> None:
    """Locations up or down, objects below full redundancy (JSON)."""
    store = ctx.archive().blobs
    status = getattr(store, "status", None)
    click.echo(json.dumps(status() if callable(status) else store.health(), indent=2))
