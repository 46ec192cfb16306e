"""URIs as they may be shown: in status, Events, logs and metrics. Artifact and
remote-write URIs can carry credentials (userinfo) or presigned queries, which only the
fetch itself may see."""

from __future__ import annotations

import urllib.parse


def redact_uri(uri: str) -> str:
    """The URI without userinfo, query or fragment (each replaced by a marker)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URI>"
    if ":" in host:
        host = f"[{host}]"
    netloc = ("<redacted>@" if parts.username or parts.password else "") + host
    if port is not None:
        netloc += f":{port}"
    query = "<redacted>" if parts.query else ""
    fragment = "<redacted>" if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
