"""What both command lines share: one-line errors for bad configuration, the bind error
that names the flag, and logs as logfmt (`--log-format text`) or JSON lines
(`--log-format json`) for log shippers."""

from __future__ import annotations

import errno
import json
import logging
import re
import socket
import sys
from datetime import UTC, datetime
from typing import Literal, NoReturn

from pydantic import ValidationError

LogFormat = Literal["text", "json"]
EXIT_BAD_CONFIGURATION = 2
# Records' own attributes, which a JSON line does not repeat as extra fields.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_LOGFMT_BARE = re.compile(r"^[^\s\"=]+$")


class BadConfiguration(Exception):
    """Configuration the process cannot run with (a flag, a file, a port in use); the
    message is one line that names what to change."""


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_settings_error(error: Exception) -> str:
    """One line for a settings model's refusal: each problem as `--flag: reason`."""
    if not isinstance(error, ValidationError):
        return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    problems = []
    for item in error.errors():
        where = flag(str(item["loc"][0])) if item["loc"] else ""
        reason = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] != "missing" and where:
            reason += f" (got {str(item['input'])[:80]!r})"
        problems.append(f"{where}: {reason}" if where else reason)
    return "; ".join(problems)


def exit_bad_configuration(program: str, message: str) -> NoReturn:
    print(f"{program}: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_CONFIGURATION)


def port_in_use(option: str, host: str, port: int) -> BadConfiguration:
    return BadConfiguration(f"{option} {port}: {host}:{port} is in use by another process; "
                            f"choose another port with {option}")


def ensure_free(host: str, ports: dict[str, int]) -> None:
    """Raises BadConfiguration naming the flag of the first port something else listens
    on, before a server that would bind it starts; each is bound as a server binds it
    (SO_REUSEADDR) and let go at once."""
    for option, port in ports.items():
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise port_in_use(option, host, port) from None
                raise BadConfiguration(f"{option} {port}: cannot listen on {host}:{port}: "
                                       f"{error.strerror}") from None


# ---------------------------------------------------------------- logs


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def logfmt_value(value: object) -> str:
    text = str(value)
    if _LOGFMT_BARE.match(text):
        return text
    return json.dumps(text, ensure_ascii=False)  # quoted, with \" \\ \n escaped


class LogfmtFormatter(logging.Formatter):
    """`time=2026-12-01T10:00:00.123Z level=info logger=edgefleet.operator msg="..."`"""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"time={_timestamp(record)} level={record.levelname.lower()} "
                f"logger={logfmt_value(record.name)} msg={logfmt_value(record.getMessage())}")
        if record.exc_info:
            line += f" exc={logfmt_value(self.formatException(record.exc_info))}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, msg (and exc, and any extra fields)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {"time": _timestamp(record),
                                       "level": record.levelname.lower(),
                                       "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in document:
                document[key] = value if isinstance(value, int | float | bool) else str(value)
        return json.dumps(document, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
