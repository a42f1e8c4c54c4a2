"""Regenerate src/engine/http/openapi.json from proto/ (with its comments) and engine.http.routes.

Usage: python scripts/gen_openapi.py [--check]

tests/http/test_openapi.py runs `build()` and fails when the committed document differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "tradescore" / "v1" / "tradescore.proto"
OUT = ROOT / "src" / "engine" / "http" / "openapi.json"


def build() -> str:
    """The document as text, compiled from proto/ with source info (grpc_tools, a dev dependency)."""
    from grpc_tools import protoc

    from engine import __version__
    from engine.http.openapi import dumps, generate

    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT / 'proto'}",
                f"-I{include}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                str(PROTO.relative_to(ROOT / "proto")),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return dumps(generate(files, __version__))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed document is stale")
    args = parser.parse_args()
    text = build()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python scripts/gen_openapi.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
