"""Generates Python code from protos/*.proto into the package edgefleet.protocol
(the folder protos/ itself), next to each .proto file.

    python hack/gen_protos.py [--check]

Imports in generated code follow the import path given to protoc; mapping protos/ to
the virtual path edgefleet/protocol makes them `edgefleet.protocol....`. `--check`
fails when the committed files differ from what the pinned grpcio-tools generates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent.parent / "protos"
PACKAGE_PATH = "edgefleet/protocol"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")


def generate(out: Path) -> dict[Path, bytes]:
    """Runs protoc; returns generated files keyed by their path relative to protos/."""
    # Messages only: servicers register their methods by hand (see the .proto files).
    args = ["protoc", f"-I{PACKAGE_PATH}={PROTOS}", f"--python_out={out}", f"--pyi_out={out}",
            *(str(f) for f in sorted(PROTOS.rglob("*.proto")))]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")
    root = out / PACKAGE_PATH
    return {path.relative_to(root): path.read_bytes() for path in root.rglob("*")
            if path.name.endswith(GENERATED_SUFFIXES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
    committed = {path.relative_to(PROTOS): path.read_bytes() for path in PROTOS.rglob("*")
                 if path.name.endswith(GENERATED_SUFFIXES)}
    if args.check:
        if generated != committed:
            stale = sorted(str(p) for p in generated.keys() | committed.keys()
                           if generated.get(p) != committed.get(p))
            print(f"stale generated code: {', '.join(stale)}; run `make protos`",
                  file=sys.stderr)
            return 1
        return 0
    for path in committed.keys() - generated.keys():
        (PROTOS / path).unlink()
    for path, content in generated.items():
        (PROTOS / path).write_bytes(content)
        for package in [PROTOS / parent for parent in path.parents]:
            (package / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
