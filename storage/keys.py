"""Master key (key-encryption key) and per-patient data keys.

* The master key ring holds one or more 256-bit versions; the highest is current. It comes from a key
  file (created on first start, mode 0600, with a warning to back it up) or from ``PACS_MASTER_KEY``.
* A patient data key (DEK) is 32 random bytes, stored only wrapped: AES-256-GCM under a master key
  version, with associated data binding the key id and the version (security.md, "Keys").
* Sub-keys are derived from a DEK with HKDF-SHA256 and a purpose label, so one DEK never encrypts
  two kinds of data with the same key.

One small interface, :class:`KeyRing`, two implementations: :class:`MasterKeyRing` (the key bytes in
this process, from the file or the environment) and :class:`storage.hsm.Pkcs11KeyRing` (the keys
stay inside a PKCS#11 token; wrapping and unwrapping run in the token). :func:`open_master_keys`
picks one from the settings.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import KeyUnavailable

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)

KEY_BYTES = 32
_WRAP_LABEL = b"pacs/wrap/v1|"


def hkdf(key: bytes, info: bytes, salt: bytes | None = None, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under master key version ``kek_version``: nonce (12) + ciphertext + tag."""

    kek_version: int
    blob: bytes


class KeyRing(Protocol):
    """The versions of the master key: wrap and unwrap data keys, rotate, retire (security.md "Keys").

    ``rotated()`` and ``retired()`` return the new ring after making the change durable where the
    ring lives (its key file, its token); ``location`` says where that is ("" when nowhere: a ring
    from the environment, which the operator must set again).
    """

    @property
    def current_version(self) -> int: ...
    @property
    def versions(self) -> list[int]: ...
    @property
    def location(self) -> str: ...
    def has(self, version: int) -> bool: ...
    def wrap(self, key_id: str, key: bytes, version: int | None = None) -> WrappedKey: ...
    def unwrap(self, key_id: str, wrapped: WrappedKey) -> bytes: ...
    def rotated(self) -> KeyRing: ...
    def retired(self, version: int) -> KeyRing: ...


def wrap_aad(key_id: str, version: int) -> bytes:
    """The associated data of a wrapped key: binds the key id and the master key version."""
    return _WRAP_LABEL + key_id.encode() + b"|" + str(version).encode()


class MasterKeyRing:
    """The versions of the master key this process holds. Never logged, never written but to its file."""

    def __init__(self, versions: dict[int, bytes], path: Path | None = None):
        if not versions:
            raise KeyUnavailable("no master key version loaded")
        for v, k in versions.items():
            if len(k) != KEY_BYTES:
                raise KeyUnavailable(f"master key version {v} is not {KEY_BYTES} bytes")
        self._versions = dict(versions)
        self._path = path  # the key file it was read from (None: from the environment)

    def __repr__(self) -> str:
        return f"MasterKeyRing(versions={self.versions})"  # never the key bytes

    @property
    def location(self) -> str:
        return str(self._path) if self._path is not None else ""

    def rotated(self) -> MasterKeyRing:
        """A new random current version, saved to the key file (if any) before it is used."""
        ring = self.with_new_version()
        if ring._path is not None:
            ring.save(ring._path)
        return ring

    def retired(self, version: int) -> MasterKeyRing:
        ring = self.without(version)
        if ring._path is not None:
            ring.save(ring._path)
        return ring

    @property
    def current_version(self) -> int:
        return max(self._versions)

    @property
    def versions(self) -> list[int]:
        return sorted(self._versions)

    def has(self, version: int) -> bool:
        return version in self._versions

    def wrap(self, key_id: str, key: bytes, version: int | None = None) -> WrappedKey:
        v = self.current_version if version is None else version
        nonce = os.urandom(12)
        return WrappedKey(v, nonce + AESGCM(self._versions[v]).encrypt(nonce, key, wrap_aad(key_id, v)))

    def unwrap(self, key_id: str, wrapped: WrappedKey) -> bytes:
        kek = self._versions.get(wrapped.kek_version)
        if kek is None:
            raise KeyUnavailable(f"master key version {wrapped.kek_version} is not loaded")
        aad = wrap_aad(key_id, wrapped.kek_version)
        try:
            return AESGCM(kek).decrypt(wrapped.blob[:12], wrapped.blob[12:], aad)
        except InvalidTag:
            raise KeyUnavailable(
                f"master key version {wrapped.kek_version} does not open key {key_id}: wrong master key"
            ) from None

    def with_new_version(self) -> MasterKeyRing:
        """A ring with one more, freshly random, current version (for rotation)."""
        versions = dict(self._versions)
        versions[self.current_version + 1] = secrets.token_bytes(KEY_BYTES)
        return MasterKeyRing(versions, self._path)

    def without(self, version: int) -> MasterKeyRing:
        versions = {v: k for v, k in self._versions.items() if v != version}
        return MasterKeyRing(versions, self._path)

    # -- serialisation ---------------------------------------------------------------------

    def dumps(self) -> str:
        lines = ["# pacs master key ring: one 'version:base64' line per version. BACK THIS FILE UP.",
                 "# Without it every stored object is unreadable. Keep it off the data disk if you can."]
        lines += [f"{v}:{base64.b64encode(k).decode()}" for v, k in sorted(self._versions.items())]
        return "\n".join(lines) + "\n"

    @classmethod
    def loads(cls, text: str, path: Path | None = None) -> MasterKeyRing:
        versions: dict[int, bytes] = {}
        for raw in text.replace(",", "\n").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            ver, sep, b64 = line.partition(":")
            try:
                if not sep:  # a bare key is version 1
                    ver, b64 = "1", line
                versions[int(ver)] = base64.b64decode(b64, validate=True)
            except (ValueError, binascii.Error):
                raise KeyUnavailable("master key is not in 'version:base64' form") from None
        return cls(versions, path)

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600, in a directory others cannot list or enter."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = path.parent.stat().st_mode
        if mode & 0o007:  # e.g. the data directory made 0755 by the umask: not world-readable
            os.chmod(path.parent, mode & 0o770)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover .tmp keeps its old mode through O_TRUNC
        with os.fdopen(fd, "w") as fh:
            fh.write(self.dumps())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def load_master_keys(key_file: Path | None, env_value: str = "", create: bool = False) -> MasterKeyRing:
    """The ring from the environment value, else from the key file (created if allowed and absent)."""
    if env_value:
        return MasterKeyRing.loads(env_value)
    if key_file is None:
        raise KeyUnavailable("no master key: set PACS_MASTER_KEY or master_key_file")
    if key_file.exists():
        return MasterKeyRing.loads(key_file.read_text(), key_file)
    if not create:
        raise KeyUnavailable(f"master key file {key_file} does not exist")
    ring = MasterKeyRing({1: secrets.token_bytes(KEY_BYTES)}, key_file)
    ring.save(key_file)
    log.warning(
        "\n%s\nA NEW MASTER KEY was created at %s\nBack it up now and keep the copy apart from the data:\n"
        "without it, every stored object is unreadable for ever.\n%s", "!" * 72, key_file, "!" * 72)
    return ring


def uses_token(settings: Settings) -> bool:
    """Whether the master key is a PKCS#11 URI (RFC 7512) rather than key bytes."""
    return settings.master_key.startswith("pkcs11:")


def open_master_keys(settings: Settings, create: bool = False) -> KeyRing:
    """The ring the settings name: a PKCS#11 token, the environment value, or the key file.

    ``create`` makes the first version (a new key file, or a new key in the token) if there is none.
    """
    if uses_token(settings):
        from .hsm import open_token_ring

        return open_token_ring(settings, create=create)
    return load_master_keys(settings.master_key_file, settings.master_key, create=create)
