"""`edgefleet-edge`: the edge runtime's command line.

    edgefleet-edge serve --model-repository DIR [--grpc-port P] [--http-port Q] ...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="edgefleet-edge",
                                     description="EdgeFleet edge runtime")
    parser.add_argument("--version", action="version",
                        version=f"edgefleet-edge {version('edgefleet')}")
    commands = parser.add_subparsers(dest="command", required=True)
    # The subcommand's own flags (and its --help) come from its settings model.
    commands.add_parser("serve", add_help=False,
                        help="serve a local model repository, no cloud needed")
    _, rest = parser.parse_known_args(argv)

    # Imported here so that `--version` stays instant.
    from pydantic import ValidationError

    from edgefleet.edge_runtime.server import serve
    from edgefleet.edge_runtime.settings import ServeSettings

    try:
        settings = ServeSettings(_cli_parse_args=rest)
    except ValidationError as error:
        parser.exit(2, f"edgefleet-edge serve: {error}\n")
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="time=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
    )
    if not settings.model_repository.is_dir():
        parser.error(f"--model-repository {settings.model_repository}: not a directory")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
