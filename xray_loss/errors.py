"""What counts as the user's error: bad config, data, files or statistics inputs, explained in one
sentence that names the thing and how to fix it. Only these print without a traceback (Hydra
shows a ``CompactHydraException``'s message alone); anything else is a bug and keeps its stack."""

from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """The base of the project's own one-sentence errors (config, data, rules, records)."""
