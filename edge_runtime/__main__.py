"""`edgefleet-edge`: the edge runtime's command line.

    edgefleet-edge serve --model-repository DIR [--grpc-port P] [--http-port Q] ...
    edgefleet-edge run --cloud HOST:PORT --namespace NS --device NAME --data-dir D \
        (--ca-cert-hash sha256:HEX | --tls-ca-file CA) (--token-file F | --fleet-token-file F \
        [--label K=V ...]) [--enrolment-address HOST:PORT] [--grpc-port P] ...
    edgefleet-edge run --insecure-plaintext --cloud HOST:PORT --namespace NS --device NAME \
        --token-file F --data-dir D ...
"""

from __future__ import annotations

import argparse
import asyncio
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
    commands.add_parser("run", add_help=False,
                        help="serve what the cloud assigns, and keep serving without it")
    args, rest = parser.parse_known_args(argv)

    # Imported here so that `--version` stays instant.
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from edgefleet.edge_runtime.server import serve
    from edgefleet.edge_runtime.settings import RunSettings, ServeSettings
    from edgefleet.protocol.cli import (
        BadConfiguration,
        configure_logging,
        describe_settings_error,
        ensure_free,
    )

    program = f"edgefleet-edge {args.command}"
    settings_type = ServeSettings if args.command == "serve" else RunSettings
    try:
        settings = settings_type(_cli_parse_args=rest, _cli_prog_name=program)
    except (ValidationError, SettingsError) as error:
        parser.exit(2, f"{program}: {describe_settings_error(error)}\n")
    try:
        token = settings.auth_token()
        # Before any model loads: a second runtime on this host says so at once.
        ensure_free(settings.listen_host, {"--grpc-port": settings.grpc_port,
                                           "--http-port": settings.http_port,
                                           "--metrics-port": settings.metrics_port})
    except BadConfiguration as error:
        parser.exit(2, f"{program}: {error}\n")
    except (OSError, ValueError) as error:
        parser.error(str(error))
    configure_logging(settings.log_level, settings.log_format)
    if isinstance(settings, ServeSettings):
        from edgefleet.edge_runtime.repository import RepositorySync

        if not settings.model_repository.is_dir():
            parser.error(f"--model-repository {settings.model_repository}: not a directory")
        repository, poll = settings.model_repository, settings.poll_seconds
        asyncio.run(serve(settings, lambda engine: RepositorySync(engine, repository, poll),
                          token))
    else:
        from edgefleet.edge_runtime.agent import CloudAgent
        from edgefleet.edge_runtime.capture import Collector
        from edgefleet.edge_runtime.errors import InferenceError
        from edgefleet.edge_runtime.identity import identity_stored
        from edgefleet.edge_runtime.store import Store

        stored = identity_stored(settings.data_dir)
        try:
            settings.check_cloud_link(stored)
        except ValueError as error:
            parser.error(str(error))
        for flag, path in (("--token-file", settings.token_file),
                           ("--fleet-token-file", settings.fleet_token_file),
                           ("--tls-ca-file", settings.tls_ca_file)):
            # A token is read again at each enrolment: once enrolled, it may be gone.
            needed = flag == "--tls-ca-file" or settings.insecure_plaintext or not stored
            if path is not None and needed and not path.is_file():
                parser.error(f"{flag} {path}: not a readable file")
        run_settings = settings
        try:
            store = Store(settings.data_dir)
        except InferenceError as error:
            parser.error(f"--data-dir: {error.message}")
        collector = Collector(settings.data_dir / "capture", settings.feedback_window)
        asyncio.run(serve(settings,
                          lambda engine: CloudAgent(run_settings, engine, store, collector),
                          token, collector))


if __name__ == "__main__":
    main()
