"""Generates the Python stubs of proto/citycredit/v1/*.proto into tests/python/gen/.

The output is a plain directory tree (citycredit/v1/*_pb2.py, *_pb2_grpc.py) without
__init__.py files: Python imports it as namespace packages once gen/ is on sys.path, which
conftest.py arranges. gen/ is gitignored and rebuilt from scratch on every run.

Usage: python tests/python/gen_stubs.py   (from any directory; needs grpcio-tools)
"""

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO = ROOT / "proto"
GEN = HERE / "gen"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "citycredit" / "v1").glob("*.proto"))
    if not protos:
        print(f"no .proto files under {PROTO}/citycredit/v1", file=sys.stderr)
        return 1
    shutil.rmtree(GEN, ignore_errors=True)
    GEN.mkdir(parents=True)
    # The same as `python -m grpc_tools.protoc`, which adds the well-known types' include path.
    wkt = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{wkt}",
        f"--python_out={GEN}",
        f"--grpc_python_out={GEN}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"protoc failed ({rc})", file=sys.stderr)
        return rc
    print(f"generated stubs for {len(protos)} protos into {GEN.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
