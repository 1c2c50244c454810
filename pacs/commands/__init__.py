"""Admin verbs of ``pacs``: each module defines a click command or group named ``cli``."""
