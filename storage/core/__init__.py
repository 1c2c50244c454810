"""The archive core, one job per module, combined by :class:`storage.archive.Archive` (the facade).

Front doors import from :mod:`storage.archive`, not from here; these modules are its rooms.
"""
