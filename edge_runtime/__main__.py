"""`edgefleet-edge`: the edge runtime's command line (only `--version` so far)."""

from __future__ import annotations

import argparse
from importlib.metadata import version


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="edgefleet-edge",
                                     description="EdgeFleet edge runtime")
    parser.add_argument("--version", action="version",
                        version=f"edgefleet-edge {version('edgefleet')}")
    parser.parse_args(argv)
    parser.print_help()


if __name__ == "__main__":
    main()
