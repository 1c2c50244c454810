"""A bare pynetdicom C-STORE SCP for measuring the transport alone.

Each received instance is written to ``DIR/<n>.dcm`` and fsynced before
Success is answered (no encryption, no index). Usage::

    python -m bench.bare_scp --port 11112 --dir /tmp/x [--no-tune] [--workers 2] [--fast]

``--fast``: C-STOREs go through :mod:`pacs.fastpath` (written with their Part 10 header).
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

from pynetdicom import AE, StoragePresentationContexts, _config, evt
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
        if _config.STORE_RECV_CHUNKED_DATASET:
            # pynetdicom streamed the dataset to a temporary file: copy it.
            with open(event.dataset_path, "rb") as src:
                shutil.copyfileobj(src, f, 1024 * 1024)
        else:
            f.write(event.encoded_dataset(include_meta=False))

    _write(out, fsync, body)
    return 0x0000


def fast_store(out: Path, fsync: bool, part10: BinaryIO, actor: str, origin: str) -> tuple[int, str]:
    """The same for pacs.fastpath: write the received Part 10 bytes and fsync them."""
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
    ap.add_argument("--fast", action="store_true", help="pacs.fastpath serves C-STORE")
    ap.add_argument("--chunked", action="store_true", help="STORE_RECV_CHUNKED_DATASET")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.dir.mkdir(parents=True, exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = args.chunked

    if args.no_tune:
        ae, handlers = make_ae(args.dir, not args.no_fsync)
        if args.max_pdu is not None:
            ae.maximum_pdu_size = args.max_pdu
        ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)
        return

    from pacs import fastpath, transport

    if args.fast:
        fastpath.register(handle_store, fast_store)
    def serve() -> None:
        transport.tune()
        ae, handlers = make_ae(args.dir, not args.no_fsync)
        if args.max_pdu is not None:
            ae.maximum_pdu_size = args.max_pdu
        transport.serve_forever(
            ae, "127.0.0.1", args.port, reuse_port=args.workers > 1, evt_handlers=handlers
        )

    if args.workers > 1:
        from pacs import workers

        raise SystemExit(workers.prefork(serve, args.workers))
    else:
        serve()


if __name__ == "__main__":
    main()
