"""Cost of wrapping and unwrapping one patient data key: the file ring against a PKCS#11 token.

Usage (SoftHSM2 from Debian's ``softhsm2``; a throw-away token directory is made)::

    python -m bench.keys [--n 2000] [--module /usr/lib/softhsm/libsofthsm2.so]

An unwrap is what a cold patient costs (first object of a patient a process reads or stores after
start, or after the patient's key fell out of the ``key_cache_size`` LRU); a wrap is what a new
patient costs. Both are printed per key, in microseconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path


def _time(fn, n: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--module", default="/usr/lib/softhsm/libsofthsm2.so")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin", "bench-so",
                    "--pin", "bench-pin"], check=True, capture_output=True)

    from storage.config import load_settings
    from storage.hsm import open_token_ring
    from storage.keys import MasterKeyRing

    settings = load_settings(env={}, data_dir=tmp / "data", master_key="pkcs11:token=bench;object=m",
                             pkcs11_module=args.module, pkcs11_pin="bench-pin")
    rings = {"file": MasterKeyRing({1: os.urandom(32)}), "pkcs11": open_token_ring(settings, create=True)}
    dek = os.urandom(32)
    print("| ring | wrap us/key | unwrap us/key |")
    print("|---|---|---|")
    for name, ring in rings.items():
        wrapped = [ring.wrap(f"k{i}", dek) for i in range(args.n)]
        w = _time(lambda i, r=ring: r.wrap(f"k{i}", dek), args.n)
        u = _time(lambda i, r=ring, ws=wrapped: r.unwrap(f"k{i}", ws[i]), args.n)
        print(f"| {name} | {w:.1f} | {u:.1f} |")


if __name__ == "__main__":
    main()
