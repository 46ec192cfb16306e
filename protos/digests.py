"""The one digest format both sides accept: `sha256:` and 64 lowercase hex digits.

A digest names a blob on disk on the operator and on the device, so a value that does
not match exactly is refused where it enters and never joined into a path.
"""

from __future__ import annotations

import re

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
_DIGEST = re.compile(DIGEST_PATTERN)


class InvalidDigestError(ValueError):
    """A value that is not `sha256:` and 64 lowercase hex digits."""

    def __init__(self, value: str) -> None:
        super().__init__(f"digest {value[:80]!r} is not 'sha256:' and 64 lowercase hex digits")


def is_digest(value: str) -> bool:
    return _DIGEST.fullmatch(value) is not None


def hex_part(digest: str) -> str:
    """The 64 hex digits of a valid digest, safe as a file name; raises otherwise."""
    if not is_digest(digest):
        raise InvalidDigestError(digest)
    return digest.removeprefix("sha256:")
