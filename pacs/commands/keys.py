"""``pacs keys rotate|retire|status``: master key rotation (security.md "Keys")."""

from __future__ import annotations

import click

from pacs.cli import Context, pass_ctx


@click.group(name="keys")
def cli() -> None:
    """Master key versions."""


@cli.command()
@pass_ctx
def status(ctx: Context) -> None:
    """Versions in the ring and how many keys each still wraps."""
    from storage.rotation import versions_in_use

    archive = ctx.archive()
    used = versions_in_use(archive)
    for v in archive.vault.ring.versions:
        click.echo(f"version {v}: {used.get(v, 0)} wrapped key(s)"
                   + (" (current)" if v == archive.vault.ring.current_version else ""))


@cli.command()
@pass_ctx
def rotate(ctx: Context) -> None:
    """New master key version; rewrap every patient and system key. No stored object is rewritten."""
    from storage.rotation import rotate as run

    r = run(ctx.archive())
    click.echo(f"master key version {r.version}: rewrapped {r.patient_keys} patient key(s) and "
               f"{r.system_keys} system key(s)")
    if r.saved_to.startswith("PKCS#11"):
        click.echo(f"made in the {r.saved_to}; it never leaves the token.")
    elif r.saved_to:
        click.echo(f"saved to {r.saved_to}. BACK IT UP NOW.")
    else:
        click.echo("The master key comes from PACS_MASTER_KEY: set it to this ring before the next start:")
        from storage.keys import MasterKeyRing

        assert isinstance(r.ring, MasterKeyRing)  # a ring from the environment: bytes in this process
        click.echo(",".join(line for line in r.ring.dumps().splitlines()
                            if not line.startswith("#")))


@cli.command()
@click.option("--version", "version", type=int, required=True)
@pass_ctx
def retire(ctx: Context, version: int) -> None:
    """Remove an old master key version once no key is wrapped under it."""
    from storage.keys import MasterKeyRing
    from storage.rotation import RotationError
    from storage.rotation import retire as run

    archive = ctx.archive()
    try:
        ring = run(archive, version)
    except RotationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"retired version {version}; the ring now holds {ring.versions}")
    if not ring.location and isinstance(ring, MasterKeyRing):
        click.echo(",".join(line for line in ring.dumps().splitlines() if not line.startswith("#")))
