"""Patch: the process settings pynetdicom's threads run best with.

What it changes:

- ``pynetdicom._config.LOG_HANDLER_LEVEL`` becomes ``"none"`` unless the ``pynetdicom`` logger is at
  DEBUG. Why: its "standard" handlers format a debug summary of every PDU and DIMSE message even when
  nothing is logged. Figure: ~2 % CPU. Upstream: yes (check the logger's level before formatting).
- ``_config.LOG_RESPONSE_IDENTIFIERS`` and ``LOG_REQUEST_IDENTIFIERS`` become false on the same
  condition. Why: the Q/R service formats every C-FIND identifier it sends or receives
  (``pretty_dataset``: patient names and IDs) for DEBUG lines nobody logs. Figure: ~3 % of the
  server's samples per pending C-FIND response. Upstream: yes (same fix).
- The GIL switch interval (``sys.setswitchinterval``) drops from CPython's 5 ms to the
  ``dimse_switch_interval`` setting (0.5 ms). Why: a reactor woken by another thread otherwise waits
  up to 5 ms for the GIL; not a pynetdicom change, but set here with the patches that need it.
  Figure: part of the reactor gains in bench/README.md ("Transport alone"; ``bare-nofsync-si5``
  measures 5 ms). Upstream: no (a process-wide choice).
"""

from __future__ import annotations

import logging
import sys

from pynetdicom import _config

from .guard import require


def check() -> None:
    require(getattr(_config, "LOG_HANDLER_LEVEL", None) in ("standard", "none"),
            "_config.LOG_HANDLER_LEVEL changed")
    for name in ("LOG_RESPONSE_IDENTIFIERS", "LOG_REQUEST_IDENTIFIERS"):
        require(isinstance(getattr(_config, name, None), bool), f"_config.{name} changed")


def install(switch_interval: float | None) -> None:
    if switch_interval:
        sys.setswitchinterval(switch_interval)
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        _config.LOG_HANDLER_LEVEL = "none"
        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.LOG_REQUEST_IDENTIFIERS = False
