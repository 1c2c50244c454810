"""A bare pynetdicom C-STORE SCP for measuring the transport alone.

Each received instance is written to ``DIR/<n>.dcm`` and fsynced before
Success is answered (no encryption, no index). Usage::

    python -m bench.bare_scp --port 11112 --dir /tmp/x [--no-tune] [--workers 2] [--fast]

``--fast``: C-STOREs go through :mod:`pacs.dimse.fastpath` (written with their Part 10 header).
``--chunked``: pynetdicom writes each data set into the encrypted receive spool
(:mod:`pacs.dimse.receive`) and the handler copies it out. The settings it takes from the
environment (``PACS_DIMSE_MAX_PDU`` for ``--fast``, ``PACS_DIMSE_SWITCH_INTERVAL``,
``PACS_DIMSE_PATCHES``) are read through ``storage.config.load_settings``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

_counter = itertools.count()
_lock = threading.Lock()


def _write(out: Path, fsync: bool, body: Callable[[BinaryIO], None]) -> None:
    """A new file in ``out`` filled by ``body``, fsynced if asked."""
    with _lock:
        n = next(_counter)
    fd = os.open(out / f"{os.getpid()}-{n}.dcm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            body(f)
            f.flush()
            if fsync:
                os.fsync(fd)
    finally:
        os.close(fd)


def handle_store(event: evt.Event, out: Path, fsync: bool = True) -> int:
    """Write the received dataset as received (no file meta) and fsync it."""

    def body(f: BinaryIO) -> None:
        from pacs.dimse import receive

        if receive.is_installed():  # pynetdicom streamed the dataset into our spool: copy it
            with receive.received(event) as src:  # type: ignore[union-attr]
                shutil.copyfileobj(src, f, 1024 * 1024)
        else:
            f.write(event.encoded_dataset(include_meta=False))

    _write(out, fsync, body)
    return 0x0000


def fast_store(out: Path, fsync: bool, part10: BinaryIO, actor: str, origin: str) -> tuple[int, str]:
    """The same for pacs.dimse.fastpath: write the received Part 10 bytes and fsync them."""
    _write(out, fsync, lambda f: shutil.copyfileobj(part10, f, 1024 * 1024))
    return 0x0000, ""


def make_ae(out: Path, fsync: bool = True) -> tuple[AE, list]:
    """Return an AE accepting every storage SOP class, and its handlers."""
    ae = AE(ae_title="PACS")
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.maximum_associations = 64
    return ae, [(evt.EVT_C_STORE, handle_store, [out, fsync])]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--no-tune", action="store_true", help="stock pynetdicom")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-pdu", type=int, default=None)
    ap.add_argument("--no-fsync", action="store_true", help="measure the transport alone")
    ap.add_argument("--fast", action="store_true", help="pacs.dimse.fastpath serves C-STORE")
    ap.add_argument("--chunked", action="store_true", help="STORE_RECV_CHUNKED_DATASET")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.dir.mkdir(parents=True, exist_ok=True)

    if args.no_tune:
        ae, handlers = make_ae(args.dir, not args.no_fsync)
        if args.max_pdu is not None:
            ae.maximum_pdu_size = args.max_pdu
        ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)
        return

    from pacs import dimse
    from pacs.dimse import server
    from storage.config import load_settings

    settings = load_settings()
    dimse.install(settings.dimse_patches, switch_interval=settings.dimse_switch_interval)
    if not args.chunked:  # the receive patch turns chunked receiving on; the default keeps it in memory
        from pacs.dimse import receive

        receive.uninstall()

    def serve() -> None:
        ae, handlers = make_ae(args.dir, not args.no_fsync)
        if args.fast:
            ae.maximum_pdu_size = settings.dimse_max_pdu
        if args.max_pdu is not None:
            ae.maximum_pdu_size = args.max_pdu
        fast = (fast_store, [args.dir, not args.no_fsync]) if args.fast else None
        server.serve_forever(ae, "127.0.0.1", args.port, reuse_port=args.workers > 1,
                             evt_handlers=handlers, fast_store=fast)

    if args.workers > 1:
        from pacs import workers

        raise SystemExit(workers.prefork(serve, args.workers))
    else:
        serve()


if __name__ == "__main__":
    main()
