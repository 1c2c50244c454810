"""``pacs token create|list|revoke``: DICOMweb API tokens for providers (see dicomweb/auth.py).

Each token acts for one provider (``--provider NAME``, default ``default``) and sees only its
patients; ``--cross-tenant`` makes an operator's token that sees every provider (storage/tokens.py).
"""

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
@click.option("--provider", default=None, help="The provider it acts for (pacs provider add); "
              "default: 'default'.")
@click.option("--cross-tenant", is_flag=True, help="Sees every provider's patients (archive "
              "operators only); not with --provider.")
@pass_ctx
def create(ctx: Context, name: str, scope: str, provider: str | None, cross_tenant: bool) -> None:
    """Create a token and print it once (only its SHA-256 is kept)."""
    from storage.tokens import create_token

    try:
        token = create_token(ctx.archive(create_key=True), name, scope, provider=provider,
                             cross_tenant=cross_tenant)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
    whose = "every provider" if cross_tenant else f"provider {provider or 'default'}"
    click.echo(f"token {name!r} ({scope}, {whose}) created; it is shown only now. "
               "Use it as 'Authorization: Bearer <token>'.", err=True)


@cli.command(name="list")
@pass_ctx
def list_(ctx: Context) -> None:
    """List tokens (names, scopes, providers, never the tokens)."""
    from storage.tokens import list_tokens

    for t in list_tokens(ctx.archive()):
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        whose = "*cross-tenant*" if t.cross_tenant else t.provider
        click.echo(f"{t.name}\t{t.scope}\t{whose}\t{t.created_at:%Y-%m-%d %H:%M}\t{state}")


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
