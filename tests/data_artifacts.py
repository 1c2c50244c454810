"""Real sample artifacts for tests: PDF (reportlab), JPEG/PNG (Pillow), MP4 (ffmpeg CLI),
WAV (stdlib wave), RTF and text notes. Reusable by other test modules."""

from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import tempfile
import wave
from pathlib import Path

from PIL import Image
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas


def make_pdf(text: str = "Discharge letter", pages: int = 1) -> bytes:
    """A real multi-line PDF made by reportlab."""
    out = io.BytesIO()
    c = canvas.Canvas(out, pagesize=A4)
    for page in range(pages):
        c.drawString(72, 770, f"{text} (page {page + 1})")
        c.drawString(72, 750, "Blood pressure 120/80, no findings.")
        c.showPage()
    c.save()
    return out.getvalue()


def _gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", (width, height))
    img.putdata(
        [((x * 7) % 256, (y * 5) % 256, (x * y) % 256) for y in range(height) for x in range(width)]
    )
    return img.convert(mode)


def make_jpeg(
    width: int = 64, height: int = 48, *, progressive: bool = False, mode: str = "RGB"
) -> bytes:
    """A JPEG (baseline unless ``progressive``) made by Pillow."""
    out = io.BytesIO()
    _gradient(width, height, mode).save(out, format="JPEG", quality=90, progressive=progressive)
    return out.getvalue()


def make_png(width: int = 33, height: int = 17, mode: str = "RGB") -> bytes:
    """A PNG made by Pillow (odd sizes on purpose: odd pixel-data length)."""
    out = io.BytesIO()
    _gradient(width, height, mode).save(out, format="PNG")
    return out.getvalue()


def make_image(fmt: str, width: int = 20, height: int = 10, mode: str = "RGB") -> bytes:
    """Any Pillow-writable image format (GIF, BMP, TIFF...)."""
    out = io.BytesIO()
    _gradient(width, height, mode).save(out, format=fmt)
    return out.getvalue()


def make_mp4(
    seconds: float = 1.0, size: str = "320x240", rate: int = 25, level: str = "4.1"
) -> bytes:
    """A short H.264 High Profile MP4 made by the ``ffmpeg`` CLI."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        subprocess.run(
            [
                ffmpeg,
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc=size={size}:rate={rate}",
                "-t",
                str(seconds),
                "-c:v",
                "libx264",
                "-profile:v",
                "high",
                "-level",
                level,
                "-pix_fmt",
                "yuv420p",
                "-movflags",
                "+faststart",
                str(path),
            ],
            check=True,
        )
        return path.read_bytes()


def make_wav(seconds: float = 0.25, rate: int = 8000, channels: int = 1, width: int = 2) -> bytes:
    """A PCM WAV (440 Hz tone) written by the stdlib ``wave`` module."""
    n = int(seconds * rate)
    frames = bytearray()
    for i in range(n):
        v = math.sin(2 * math.pi * 440 * i / rate)
        for ch in range(channels):
            s = v if ch == 0 else -v
            frames += (
                struct.pack("<h", int(s * 20000)) if width == 2 else bytes([int(128 + s * 100)])
            )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return out.getvalue()


def add_wav_list_chunk(wav: bytes, text: bytes = b"dictation") -> bytes:
    """The WAV with a LIST/INFO chunk after the data (as many recorders write)."""
    info = (
        b"INFO"
        + b"ICMT"
        + struct.pack("<I", len(text))
        + text
        + (b"\x00" if len(text) % 2 else b"")
    )
    chunk = b"LIST" + struct.pack("<I", len(info)) + info
    body = wav[12:] + chunk
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


RTF_NOTE = (
    rb"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0 Arial;}}"
    rb"\f0\fs24 Follow-up in \b two weeks\b0.\par Caf\'e9 allergy: none.\par}"
)
TEXT_NOTE = b"Patient reports less pain.\nNext visit: 3 weeks.\n"
TEXT_NOTE_UNICODE = "Schmerzen geringer; Müller-Lüdenscheidt, 5 mg/kg — ok.\n".encode()


def ffmpeg_make(suffix: str, *args: str) -> bytes:
    """Run the ``ffmpeg`` CLI writing ``out<suffix>`` in a temp dir; return the file's bytes."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"out{suffix}"
        subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *args, str(path)],
                       check=True)
        return path.read_bytes()


def _tone(seconds: float, rate: int, channels: int) -> list[str]:
    layout = "mono" if channels == 1 else "stereo"
    return ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds}",
            "-af", f"aformat=channel_layouts={layout}", "-ac", str(channels)]


def make_mp3(seconds: float = 0.5, rate: int = 8000, channels: int = 1) -> bytes:
    """An MP3 dictation (ffmpeg's libmp3lame)."""
    return ffmpeg_make(".mp3", *_tone(seconds, rate, channels), "-c:a", "libmp3lame", "-b:a", "32k")


def make_m4a(seconds: float = 0.5, rate: int = 16000, channels: int = 1) -> bytes:
    """An M4A (AAC in MP4, brand M4A) dictation, as a phone's voice recorder writes."""
    return ffmpeg_make(".m4a", *_tone(seconds, rate, channels), "-c:a", "aac", "-b:a", "48k")


def make_aac(seconds: float = 0.5, rate: int = 16000, channels: int = 1) -> bytes:
    """A raw AAC dictation in ADTS frames (``.aac``, as some voice recorders write it)."""
    return ffmpeg_make(".aac", *_tone(seconds, rate, channels), "-c:a", "aac", "-b:a", "48k")


def make_ogg_opus(seconds: float = 0.5, channels: int = 1) -> bytes:
    """An Ogg/Opus voice message (48 kHz, as Opus always decodes)."""
    return ffmpeg_make(".ogg", *_tone(seconds, 48000, channels), "-c:a", "libopus", "-b:a", "24k")


def make_video(suffix: str = ".mov", codec: str = "libx265", seconds: float = 0.4,
               size: str = "160x120", rate: int = 25, audio: bool = False,
               extra: tuple[str, ...] = ()) -> bytes:
    """A short video in any container/codec ffmpeg writes (HEVC MOV as a phone makes by default)."""
    args = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    args += ["-t", str(seconds), "-c:v", codec]
    if codec == "libx265":
        args += ["-x265-params", "log-level=error", "-tag:v", "hvc1", "-pix_fmt", "yuv420p"]
    if codec in ("libx264", "mpeg4", "mjpeg"):
        args += ["-pix_fmt", "yuvj420p" if codec == "mjpeg" else "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-shortest"]
    return ffmpeg_make(suffix, *args, *extra)


def make_heic(width: int = 40, height: int = 24, orientation: int | None = None) -> bytes:
    """A HEIC photo written by pillow-heif (x265), optionally with an EXIF Orientation."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
    img = _gradient(width, height)
    out = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(out, format="HEIF", quality=90, **kwargs)
    return out.getvalue()


def make_multipage(fmt: str = "TIFF", sizes: tuple[tuple[int, int], ...] = ((30, 20), (20, 30), (16, 16))) -> bytes:
    """A multi-page TIFF scan (pages of different sizes) or an animated GIF."""
    pages = [_gradient(w, h).rotate(90 * i, expand=True) for i, (w, h) in enumerate(sizes)]
    if fmt == "GIF":
        pages = [p.resize(sizes[0]) for p in pages]
    out = io.BytesIO()
    pages[0].save(out, format=fmt, save_all=True, append_images=pages[1:], duration=100, loop=0)
    return out.getvalue()


def make_rotated_jpeg(width: int = 64, height: int = 48, orientation: int = 6) -> bytes:
    """A JPEG whose EXIF Orientation says the camera was turned (6: rotate 90 clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    _gradient(width, height).save(out, format="JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()
