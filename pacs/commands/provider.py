"""``pacs provider add|list|remove``: the providers (tenants) of the archive (issue 19).

A provider's credentials see only its own patients: its DICOMweb tokens (``pacs token create
--provider NAME``), its calling AE titles and client certificates (``[providers.NAME]`` in
conf/pacs.toml). Removing a provider stops every one of its credentials at once; its patients stay
(shred them with ``pacs patient shred`` if they must go) and the name is never reused.
"""

from __future__ import annotations

import click

from storage.errors import ArchiveError

from ..cli import Context, pass_ctx


@click.group(name="provider")
def cli() -> None:
    """Providers (tenants): each sees only the patients its credentials stored."""


@cli.command()
@click.argument("name")
@pass_ctx
def add(ctx: Context, name: str) -> None:
    """Register a provider NAME (letters, digits, spaces, '.', '_', '-'; up to 64)."""
    from storage.providers import add_provider

    try:
        info = add_provider(ctx.archive(create_key=True), name)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"provider {info.name!r} added (id {info.id}); give it tokens with "
               f"'pacs token create --provider \"{info.name}\"' and AE titles in "
               f"[providers.{info.name}] of the configuration", err=True)


@cli.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Removed providers too.")
@pass_ctx
def list_(ctx: Context, show_all: bool) -> None:
    """List providers: name, id, created, state (and the AE titles configured for each)."""
    from storage.providers import list_providers

    settings = ctx.settings
    for p in list_providers(ctx.archive(), include_deleted=show_all):
        state = f"removed {p.deleted_at:%Y-%m-%d %H:%M}" if p.deleted_at else "active"
        aets = sorted(ae for ae, who in settings.provider_aets.items() if who == p.name)
        click.echo(f"{p.name}\t{p.id}\t{p.created_at:%Y-%m-%d %H:%M}\t{state}\t{','.join(aets) or '-'}")


@cli.command()
@click.argument("name")
@pass_ctx
def remove(ctx: Context, name: str) -> None:
    """Remove a provider: its tokens, AE titles and certificates stop working at once."""
    from storage.providers import remove_provider

    try:
        remove_provider(ctx.archive(), name)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"provider {name!r} removed; its patients stay in the archive", err=True)
