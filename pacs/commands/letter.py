"""``pacs letter issue|reissue|revoke|list``: patient letters (security.md "Patient letters")."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pacs.cli import Context, pass_ctx
from storage.errors import ArchiveError

if TYPE_CHECKING:
    from storage.letters import IssuedLetter


def base_url(ctx: Context) -> str:
    scheme = "https" if ctx.settings.http_tls else "http"
    return ctx.settings.public_url or f"{scheme}://localhost:{ctx.settings.http_port}"


def _addressed(ctx: Context, issued: IssuedLetter) -> IssuedLetter:
    """The issued letter with its page's address under this server's public URL."""
    from dicomweb.patient import letter_url

    return dataclasses.replace(issued, url=letter_url(base_url(ctx), issued.selector))


def _origin() -> str:
    return os.uname().nodename


def _patient(ctx: Context, patient_id: str, issuer: str, provider: str | None = None) -> int:
    from storage.providers import provider_ref

    try:
        archive = ctx.archive()
        return archive.find_patient(patient_id, issuer, provider_ref(archive, provider))
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None


def _print(issued: IssuedLetter, pdf: Path | None) -> None:
    click.echo(f"letter:      {issued.letter_id}")
    click.echo(f"url:         {issued.url}")
    click.echo(f"access code: {issued.access_code}")
    click.echo(f"passcode:    {issued.passcode}")
    click.echo(f"expires:     {issued.expires_at:%Y-%m-%d}" if issued.expires_at else "expires:     never")
    if pdf is not None:
        write_pdf(issued, pdf)
        click.echo(f"pdf:         {pdf}")


def _check_email(ctx: Context, email: str | None) -> None:
    """Refuse a bad address or a missing mail server before a letter is issued for nothing."""
    if email is None:
        return
    from pacs.mail import MailError, check_address, check_configured

    try:
        check_address(email)
        check_configured(ctx.settings)
    except MailError as exc:
        raise click.UsageError(f"--email: {exc}") from None


def _email(ctx: Context, issued: IssuedLetter, email: str | None) -> None:
    """Mail the letter's URL (pacs/mail.py); a failure is reported and audited, the letter stays."""
    if email is None:
        return
    from pacs.mail import MailError, deliver_letter

    try:
        deliver_letter(issued, email, ctx.settings, ctx.archive().audit, actor="pacs letter",
                       origin=_origin())
    except MailError as exc:
        click.echo(f"email:       NOT SENT: {exc}; the letter above stays valid", err=True)
        raise SystemExit(3) from None
    click.echo(f"email:       sent to {email}")


def write_pdf(issued: IssuedLetter, path: Path) -> None:
    """A one-page letter a provider can print and mail (reportlab)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    c.setTitle("Your medical images")
    _w, h = A4
    y = h - 30 * mm

    def line(text: str, size: int = 11, font: str = "Helvetica", gap: float = 7) -> None:
        nonlocal y
        c.setFont(font, size)
        c.drawString(25 * mm, y, text)
        y -= gap * mm

    line("Your medical images", 18, "Helvetica-Bold", 12)
    line("You can see and download your images and reports from any web browser.")
    line("1. Open this address:")
    line(issued.url, 10, "Courier-Bold", 9)
    line("2. Type this access code (keep it secret, like a bank PIN):")
    line(issued.access_code, 16, "Courier-Bold", 11)
    line("3. To download everything, the file is locked with this passcode:")
    line(issued.passcode, 12, "Courier-Bold", 11)
    if issued.expires_at:
        line(f"This letter is valid until {issued.expires_at:%Y-%m-%d}.")
    line("After too many wrong codes the letter locks; ask your provider for a new one.", 9)
    line("Apps for medical images can also use the address followed by /dicom-web,", 9, gap=5)
    line("with the last part of the address as user name and the access code as password.", 9)
    c.showPage()
    c.save()


@click.group(name="letter")
def cli() -> None:
    """Patient letters: a URL, an access code and an export passcode."""


@cli.command()
@click.option("--patient-id", required=True)
@click.option("--issuer", default="", help="Issuer of Patient ID.")
@click.option("--provider", default=None, help="The provider whose patient it is (default: default).")
@click.option("--studies", multiple=True, help="Only these StudyInstanceUIDs (repeat or space separate).")
@click.option("--expires", type=click.DateTime(["%Y-%m-%d", "%Y%m%d"]),
              help="Expiry date (default: end of retention).")
@click.option("--pdf", type=click.Path(dir_okay=False, path_type=Path), help="Also write a PDF letter.")
@click.option("--email", default=None, metavar="ADDRESS",
              help="Also mail the letter's URL to ADDRESS (codes only if mail_codes = true).")
@pass_ctx
def issue(ctx: Context, patient_id: str, issuer: str, provider: str | None, studies: tuple[str, ...],
          expires: datetime | None, pdf: Path | None, email: str | None) -> None:
    """Issue a letter for a patient; prints the URL, access code and passcode (shown only now)."""
    from storage.letters import Letters

    _check_email(ctx, email)
    ref = _patient(ctx, patient_id, issuer, provider)
    uids = [u for item in studies for u in item.split()]
    try:
        issued = _addressed(ctx, Letters(ctx.archive()).issue(
            ref, study_uids=uids or None, expires_at=expires, actor="pacs letter", origin=_origin()))
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    _print(issued, pdf)
    _email(ctx, issued, email)


@cli.command()
@click.argument("letter")
@click.option("--pdf", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--email", default=None, metavar="ADDRESS", help="Also mail the new letter's URL.")
@pass_ctx
def reissue(ctx: Context, letter: str, pdf: Path | None, email: str | None) -> None:
    """Revoke LETTER (id or selector; e.g. a locked one) and issue a new one for the same record."""
    from storage.letters import Letters

    _check_email(ctx, email)
    try:
        issued = _addressed(ctx, Letters(ctx.archive()).reissue(letter, actor="pacs letter",
                                                                origin=_origin()))
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    _print(issued, pdf)
    _email(ctx, issued, email)


@cli.command()
@click.argument("letter")
@pass_ctx
def revoke(ctx: Context, letter: str) -> None:
    """Revoke LETTER (id or selector) and end its sessions."""
    from storage.letters import Letters

    try:
        info = Letters(ctx.archive()).revoke(letter, actor="pacs letter", origin=_origin())
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"letter {info.id}: {info.state}")


@cli.command(name="list")
@click.option("--patient-id")
@click.option("--issuer", default="")
@click.option("--provider", default=None, help="The provider whose patient it is.")
@pass_ctx
def list_(ctx: Context, patient_id: str | None, issuer: str, provider: str | None) -> None:
    """List letters (no secrets: the selector is not secret without the access code)."""
    from storage.letters import Letters

    ref = _patient(ctx, patient_id, issuer, provider) if patient_id else None
    rows = Letters(ctx.archive()).list(ref)
    click.echo("id\tpatient\tstate\tfailures\tstudies\tcreated\texpires\tselector")
    for r in rows:
        click.echo(f"{r.id}\t{r.patient_ref}\t{r.state}\t{r.failures}\t{len(r.study_uids) or 'all'}\t"
                   f"{r.created_at:%Y-%m-%d}\t{r.expires_at:%Y-%m-%d}\t{r.selector}"
                   if r.expires_at else
                   f"{r.id}\t{r.patient_ref}\t{r.state}\t{r.failures}\t{len(r.study_uids) or 'all'}\t"
                   f"{r.created_at:%Y-%m-%d}\t-\t{r.selector}")
