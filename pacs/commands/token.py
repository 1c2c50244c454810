"""``pacs token create|list|revoke``: DICOMweb API tokens for providers (see dicomweb/auth.py)."""

from __future__ import annotations

import click

from storage.errors import ArchiveError

from ..cli import Context, pass_ctx


@click.group(name="token")
def cli() -> None:
    """DICOMweb API tokens: read (QIDO/WADO), write (+STOW), admin (+DELETE)."""


@cli.command()
@click.option("--name", required=True, help="Who or what uses the token (unique).")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True)
@pass_ctx
def create(ctx: Context, name: str, scope: str) -> None:
    """Create a token and print it once (only its SHA-256 is kept)."""
    from storage.tokens import create_token

    try:
        token = create_token(ctx.archive(create_key=True), name, scope)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
    click.echo(f"token {name!r} ({scope}) created; it is shown only now. "
               "Use it as 'Authorization: Bearer <token>'.", err=True)


@cli.command(name="list")
@pass_ctx
def list_(ctx: Context) -> None:
    """List tokens (names and scopes, never the tokens)."""
    from storage.tokens import list_tokens

    for t in list_tokens(ctx.archive()):
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        click.echo(f"{t.name}\t{t.scope}\t{t.created_at:%Y-%m-%d %H:%M}\t{state}")


@cli.command()
@click.argument("name")
@pass_ctx
def revoke(ctx: Context, name: str) -> None:
    """Revoke a token by name (takes effect on the next request)."""
    from storage.tokens import revoke_token

    try:
        revoke_token(ctx.archive(), name)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"token {name!r} revoked")
