"""The ``pacs`` command line: ``serve``, ``import``, and the admin verbs in ``pacs/commands/``."""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from storage.config import Settings, load_settings
from storage.errors import ArchiveError, KeyUnavailable

if TYPE_CHECKING:  # at run time imported only when a command opens the archive, as before
    from storage.archive import Archive


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


class Context:
    """What every command gets: settings loaded once, and an archive opened on demand."""

    def __init__(self, config: str | None):
        self.config = config
        self._settings: Settings | None = None
        self._archive: Archive | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config)
            except (ValueError, OSError) as exc:
                raise click.ClickException(f"configuration: {exc}") from None
        return self._settings

    def archive(self, create_key: bool = False) -> Archive:
        from storage.archive import Archive

        if self._archive is None:
            try:
                self._archive = Archive(self.settings, create_key=create_key)
            except KeyUnavailable as exc:
                raise click.ClickException(f"cannot open the archive: {exc}") from None
            except OSError as exc:
                raise click.ClickException(f"cannot open the archive in {self.settings.data_dir}: "
                                           f"{exc.strerror or exc}") from None
        return self._archive


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="PACS_CONFIG",
              help="TOML settings file (see conf/pacs.toml); PACS_* variables override it.")
@click.option("--verbose", "-v", is_flag=True)
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """An encrypted DICOM archive: DIMSE, DICOMweb and a door for patients."""
    setup_logging(verbose)
    ctx.obj = Context(config)


@main.command()
@pass_ctx
def serve(ctx: Context) -> None:
    """Run the DICOM SCP and the DICOMweb server until interrupted."""
    from .serve import CannotStart
    from .serve import serve as run

    try:
        sys.exit(run(ctx.settings, ctx.config))
    except CannotStart as exc:
        raise click.ClickException(f"refusing to start: {exc}. Nothing was changed.") from None
    except KeyUnavailable as exc:
        if ctx.settings.master_key.startswith("pkcs11:"):
            where = "master_key, pkcs11_module and pkcs11_pin / pkcs11_pin_file"
        else:
            where = f"PACS_MASTER_KEY / master_key_file ({ctx.settings.master_key_file})"
        raise click.ClickException(
            f"refusing to start: {exc}. Nothing was changed. Check {where}.") from None


@main.command(name="import")
@click.argument("folder", type=click.Path(exists=True, file_okay=True, path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--provider", default=None, help="The provider whose patients they are (default: default).")
@pass_ctx
def import_(ctx: Context, folder: Path, quiet: bool, provider: str | None) -> None:
    """Store every DICOM file under FOLDER (recursively) and summarise what was refused."""
    from tqdm import tqdm

    from storage.providers import provider_ref

    archive = ctx.archive(create_key=True)
    try:
        tenant = provider_ref(archive, provider)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    outcome: Counter[str] = Counter()
    refused: dict[str, list[Path]] = {}  # reason -> files
    for path in tqdm(files, unit="file", disable=quiet or not sys.stderr.isatty()):
        try:
            result = archive.store(path, actor="pacs import", origin=os.uname().nodename,
                                   provider=tenant)
            outcome[result.status] += 1
        except ArchiveError as exc:
            refused.setdefault(str(exc), []).append(path)
    click.echo(f"stored {outcome['stored']}, replaced {outcome['replaced']}, "
               f"already there {outcome['duplicate']}, refused {sum(map(len, refused.values()))}")
    for reason, paths in sorted(refused.items(), key=lambda item: -len(item[1])):
        click.echo(f"  refused {len(paths)}: {reason}")
        for path in paths[:IMPORT_LISTED]:
            click.echo(f"    {path}")
        if len(paths) > IMPORT_LISTED:
            click.echo(f"    and {len(paths) - IMPORT_LISTED} more")
    if refused and not (outcome["stored"] or outcome["replaced"] or outcome["duplicate"]):
        sys.exit(1)


#: Refused files named per reason in the ``pacs import`` summary (the rest are counted).
IMPORT_LISTED = 5


def _load_commands() -> None:
    """Every module in pacs/commands/ that defines a click command or group ``cli`` joins ``pacs``."""
    from . import commands

    for mod in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"{commands.__name__}.{mod.name}")
        cmd = getattr(module, "cli", None)
        if isinstance(cmd, click.Command):
            main.add_command(cmd)


_load_commands()


if __name__ == "__main__":
    main()
