"""The master key ring inside a PKCS#11 token (an HSM; SoftHSM2 in the tests), via python-pkcs11.

``master_key = "pkcs11:token=pacs;object=pacs-master"`` (an RFC 7512 URI) names the token and the
label of the key objects; each master key version is one AES-256 secret key object with that label
and ``CKA_ID`` = the version number in ASCII. The keys are made in the token (``C_GenerateKey``)
sensitive and not extractable, so their bytes never reach this process or its disk. A data key is
wrapped and unwrapped by ``C_Encrypt``/``C_Decrypt`` with ``CKM_AES_GCM`` in the token, with the same
layout and associated data as the file ring (nonce 12 + ciphertext + tag 16; the AAD binds the key
id and the version, :func:`storage.keys.wrap_aad`), so the rest of the archive cannot tell the two
rings apart.

Module path and PIN come from the settings (``pkcs11_module``, ``pkcs11_pin`` or ``pkcs11_pin_file``,
each overridable by ``PACS_*``) or from the URI's own query attributes (``module-path``,
``pin-source``; RFC 7512 section 2.3). The PIN is never logged nor put in an error message.

python-pkcs11 initialises the module with ``C_Initialize(NULL)``: no locking by the module, so every
call into the token goes through one process-wide lock. A PKCS#11 library must be initialised again
in a child after ``fork()`` (PKCS#11 v2.40 section 6.7.7): :func:`_library` does that when it sees a
new process id. One logged-in session per process and token is shared by every ring in the process
(a second ``C_Login`` on a token is ``CKR_USER_ALREADY_LOGGED_IN``).

The URI parser is written here: the URI grammar is small (RFC 7512 section 2.3) and no maintained
package on PyPI parses it (python-pkcs11 takes the token label and key label as arguments).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .errors import KeyUnavailable
from .keys import KEY_BYTES, WrappedKey, wrap_aad

if TYPE_CHECKING:
    from .config import Settings

_NONCE = 12
_TAG_BITS = 128

# RFC 7512 path attributes we understand; any other one is refused rather than ignored.
_PATH_ATTRS = {"token", "object", "serial", "manufacturer", "model", "type"}
_QUERY_ATTRS = {"module-path", "pin-source", "pin-value"}


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 URI this archive uses."""

    token: str
    object: str
    serial: str = ""
    module_path: str = ""
    pin_source: str = ""
    pin_value: str = ""

    def __repr__(self) -> str:  # the pin never shows
        return f"Pkcs11Uri(token={self.token!r}, object={self.object!r})"


def parse_uri(uri: str) -> Pkcs11Uri:
    """Parse ``pkcs11:token=T;object=O[;serial=S][?module-path=P&pin-source=F]`` (RFC 7512).

    Raises ValueError naming what is wrong (never echoing a pin-value).
    """
    if not uri.startswith("pkcs11:"):
        raise ValueError("a PKCS#11 URI starts with 'pkcs11:'")
    path, _, query = uri[len("pkcs11:"):].partition("?")
    attrs: dict[str, str] = {}
    for part in filter(None, path.split(";")):
        name, sep, value = part.partition("=")
        if not sep or name not in _PATH_ATTRS:
            raise ValueError(f"PKCS#11 URI attribute {name!r} is not supported "
                             f"(use {', '.join(sorted(_PATH_ATTRS))})")
        attrs[name] = unquote(value)
    for part in filter(None, query.split("&")):
        name, sep, value = part.partition("=")
        if not sep or name not in _QUERY_ATTRS:
            raise ValueError(f"PKCS#11 URI query attribute {name!r} is not supported "
                             f"(use {', '.join(sorted(_QUERY_ATTRS))})")
        attrs[name] = unquote(value)
    if attrs.get("type", "secret-key") != "secret-key":
        raise ValueError("the PKCS#11 URI must name a secret key (type=secret-key)")
    if not attrs.get("token") or not attrs.get("object"):
        raise ValueError("the PKCS#11 URI needs token=<token label> and object=<key label>")
    return Pkcs11Uri(attrs["token"], attrs["object"], attrs.get("serial", ""),
                     attrs.get("module-path", ""), attrs.get("pin-source", ""),
                     attrs.get("pin-value", ""))


def module_path(settings: Settings) -> str:
    return settings.pkcs11_module or parse_uri(settings.master_key).module_path


def read_pin(settings: Settings) -> str:
    """The token PIN: ``pkcs11_pin``, else the file ``pkcs11_pin_file``, else the URI's pin-source/value.

    A PIN file holds the PIN on its first line (a trailing newline is dropped).
    """
    if settings.pkcs11_pin:
        return settings.pkcs11_pin
    uri = parse_uri(settings.master_key)
    source = str(settings.pkcs11_pin_file) if settings.pkcs11_pin_file else uri.pin_source
    if source:
        source = source.removeprefix("file://") if source.startswith("file://") else \
            source.removeprefix("file:")  # RFC 7512 2.4: pin-source is a file: URI or a path
        try:
            return Path(source).read_text().splitlines()[0] if Path(source).stat().st_size else ""
        except OSError as exc:
            raise KeyUnavailable(f"cannot read the PKCS#11 PIN file {source}: "
                                 f"{exc.strerror or exc}") from None
    return uri.pin_value


# -- the module, one session per process --------------------------------------------------------------

_lock = threading.RLock()  # every call into the module (C_Initialize(NULL): no locking of its own)
_libs: dict[str, tuple[int, Any]] = {}  # module path -> (pid that initialised it, pkcs11.lib)
_sessions: dict[tuple[str, str, str], tuple[int, bytes, Any]] = {}  # -> (pid, pin digest, session)


def _library(path: str) -> Any:
    import pkcs11

    pid = os.getpid()
    entry = _libs.get(path)
    if entry is not None:
        if entry[0] == pid:
            return entry[1]
        try:
            entry[1].reinitialize()  # a forked child: initialise the module again (PKCS#11 6.7.7)
        except pkcs11.PKCS11Error as exc:
            raise KeyUnavailable(f"the PKCS#11 module {path} cannot be initialised again after fork: "
                                 f"{type(exc).__name__}") from None
        _sessions.clear()  # the parent's sessions are not this process's
        _libs[path] = (pid, entry[1])
        return entry[1]
    if not Path(path).is_file():
        raise KeyUnavailable(f"the PKCS#11 module {path} does not exist (set pkcs11_module)")
    try:
        lib = pkcs11.lib(path)
    except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
        raise KeyUnavailable(f"the PKCS#11 module {path} cannot be loaded: {exc}") from None
    _libs[path] = (pid, lib)
    return lib


def _session(settings: Settings, uri: Pkcs11Uri) -> Any:
    """The logged-in read-write session of this process on the URI's token."""
    from pkcs11 import exceptions as e

    path = module_path(settings)
    if not path:
        raise KeyUnavailable("master_key is a PKCS#11 URI but no module is set (pkcs11_module)")
    pin = read_pin(settings)
    if not pin:
        raise KeyUnavailable("master_key is a PKCS#11 URI but no PIN is set "
                             "(pkcs11_pin, pkcs11_pin_file or PACS_PKCS11_PIN)")
    digest = hashlib.sha256(pin.encode()).digest()
    key = (path, uri.token, uri.serial)
    with _lock:
        lib = _library(path)
        entry = _sessions.get(key)
        if entry is not None and entry[0] == os.getpid():
            if entry[1] != digest:
                raise KeyUnavailable(f"the PIN for PKCS#11 token {uri.token!r} was refused")
            return entry[2]
        try:
            token = lib.get_token(token_label=uri.token,
                                  **({"token_serial": uri.serial.encode()} if uri.serial else {}))
        except e.NoSuchToken:
            raise KeyUnavailable(f"no PKCS#11 token labelled {uri.token!r} in {path}") from None
        except e.MultipleTokensReturned:
            raise KeyUnavailable(f"several PKCS#11 tokens are labelled {uri.token!r}: "
                                 "add serial=... to the URI") from None
        except e.PKCS11Error as exc:
            raise KeyUnavailable(f"PKCS#11 token {uri.token!r}: {type(exc).__name__}") from None
        try:
            session = token.open(user_pin=pin, rw=True)
        except (e.PinIncorrect, e.PinInvalid, e.PinLenRange):
            raise KeyUnavailable(f"the PIN for PKCS#11 token {uri.token!r} was refused") from None
        except e.PinLocked:
            raise KeyUnavailable(f"the PIN of PKCS#11 token {uri.token!r} is locked") from None
        except e.PKCS11Error as exc:
            raise KeyUnavailable(f"cannot log in to PKCS#11 token {uri.token!r}: "
                                 f"{type(exc).__name__}") from None
        _sessions[key] = (os.getpid(), digest, session)
        return session


class Pkcs11KeyRing:
    """:class:`storage.keys.KeyRing` over the AES keys labelled ``uri.object`` in a token."""

    def __init__(self, session: Any, uri: Pkcs11Uri, keys: dict[int, Any]):
        if not keys:
            raise KeyUnavailable(f"PKCS#11 token {uri.token!r} holds no key labelled {uri.object!r}")
        self._session = session
        self._uri = uri
        self._keys = dict(keys)

    def __repr__(self) -> str:
        return f"Pkcs11KeyRing(token={self._uri.token!r}, versions={self.versions})"

    @property
    def current_version(self) -> int:
        return max(self._keys)

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    @property
    def location(self) -> str:
        return f"PKCS#11 token {self._uri.token!r}"

    def has(self, version: int) -> bool:
        return version in self._keys

    def wrap(self, key_id: str, key: bytes, version: int | None = None) -> WrappedKey:
        from pkcs11 import Mechanism, PKCS11Error
        from pkcs11.mechanisms import GCMParams

        v = self.current_version if version is None else version
        nonce = os.urandom(_NONCE)
        try:
            with _lock:
                ct = self._keys[v].encrypt(key, mechanism=Mechanism.AES_GCM,
                                           mechanism_param=GCMParams(nonce, wrap_aad(key_id, v), _TAG_BITS))
        except PKCS11Error as exc:
            raise KeyUnavailable(f"PKCS#11 token {self._uri.token!r} could not wrap a key: "
                                 f"{type(exc).__name__}") from None
        return WrappedKey(v, nonce + bytes(ct))

    def unwrap(self, key_id: str, wrapped: WrappedKey) -> bytes:
        from pkcs11 import Mechanism, PKCS11Error
        from pkcs11.mechanisms import GCMParams

        kek = self._keys.get(wrapped.kek_version)
        if kek is None:
            raise KeyUnavailable(f"master key version {wrapped.kek_version} is not in "
                                 f"PKCS#11 token {self._uri.token!r}")
        nonce, ct = wrapped.blob[:_NONCE], wrapped.blob[_NONCE:]
        try:
            with _lock:
                key = kek.decrypt(ct, mechanism=Mechanism.AES_GCM,
                                  mechanism_param=GCMParams(nonce, wrap_aad(key_id, wrapped.kek_version),
                                                            _TAG_BITS))
        except PKCS11Error:  # SoftHSM2 answers a wrong tag with CKR_GENERAL_ERROR
            raise KeyUnavailable(f"master key version {wrapped.kek_version} in PKCS#11 token "
                                 f"{self._uri.token!r} does not open key {key_id}: wrong key") from None
        if len(key) != KEY_BYTES:
            raise KeyUnavailable(f"key {key_id} unwrapped to {len(key)} bytes")
        return bytes(key)

    def rotated(self) -> Pkcs11KeyRing:
        """A new current version, generated in the token (persistent, sensitive, not extractable)."""
        v = max([self.current_version, *_list_keys(self._session, self._uri)]) + 1
        keys = dict(self._keys)
        keys[v] = _generate(self._session, self._uri, v)
        return Pkcs11KeyRing(self._session, self._uri, keys)

    def retired(self, version: int) -> Pkcs11KeyRing:
        """Destroy the token object of ``version`` (irreversible: only once nothing is wrapped by it)."""
        from pkcs11 import PKCS11Error

        keys = dict(self._keys)
        obj = keys.pop(version)
        try:
            with _lock:
                obj.destroy()
        except PKCS11Error as exc:
            raise KeyUnavailable(f"PKCS#11 token {self._uri.token!r} could not destroy version "
                                 f"{version}: {type(exc).__name__}") from None
        return Pkcs11KeyRing(self._session, self._uri, keys)


def _list_keys(session: Any, uri: Pkcs11Uri) -> dict[int, Any]:
    from pkcs11 import Attribute, ObjectClass

    out: dict[int, Any] = {}
    with _lock:
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                        Attribute.LABEL: uri.object}):
            ident = bytes(obj[Attribute.ID])
            if ident.isdigit():
                out[int(ident)] = obj
    return out


def _generate(session: Any, uri: Pkcs11Uri, version: int) -> Any:
    from pkcs11 import Attribute, KeyType, PKCS11Error

    template = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True, Attribute.WRAP: False, Attribute.UNWRAP: False,
                Attribute.SIGN: False, Attribute.VERIFY: False, Attribute.DERIVE: False}
    try:
        with _lock:
            return session.generate_key(KeyType.AES, KEY_BYTES * 8, label=uri.object,
                                        id=str(version).encode(), store=True, template=template)
    except PKCS11Error as exc:
        raise KeyUnavailable(f"PKCS#11 token {uri.token!r} could not make a key: "
                             f"{type(exc).__name__}") from None


def log_in(settings: Settings) -> None:
    """Check that the module loads, the token is there and takes the PIN (KeyUnavailable if not)."""
    try:
        uri = parse_uri(settings.master_key)
    except ValueError as exc:
        raise KeyUnavailable(f"master_key: {exc}") from None
    _session(settings, uri)


def open_token_ring(settings: Settings, create: bool = False) -> Pkcs11KeyRing:
    """Log in to the token and list the master key versions; ``create`` makes version 1 if none.

    Raises KeyUnavailable with one line naming the token (never the PIN) when the module, the token,
    the PIN or the key is not there.
    """
    try:
        uri = parse_uri(settings.master_key)
    except ValueError as exc:
        raise KeyUnavailable(f"master_key: {exc}") from None
    session = _session(settings, uri)
    keys = _list_keys(session, uri)
    if not keys and create:
        keys = {1: _generate(session, uri, 1)}
    return Pkcs11KeyRing(session, uri, keys)
