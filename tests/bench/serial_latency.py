"""Serial (one call in flight) latency as a grpcio client sees it, through a real socket.

Run by `citycredit-bench serial-latency` with the venv of tests/python/run.sh:
    python tests/bench/serial_latency.py --addr 127.0.0.1:50051 --key <admin key> --calls 500
Prints one line per RPC: response size, mean, p50, p99 and max in milliseconds.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python" / "gen"))

import grpc  # noqa: E402

from citycredit.v1 import (  # noqa: E402
    department_registry_service_pb2 as reg_pb,
    department_registry_service_pb2_grpc as reg_grpc,
    indicator_service_pb2 as ind_pb,
    indicator_service_pb2_grpc as ind_grpc,
    scoring_service_pb2 as score_pb,
    scoring_service_pb2_grpc as score_grpc,
)


def measure(name, call, calls):
    answer = call()  # warms the connection and the server's caches
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p99 = times[max(0, int(len(times) * 0.99) - 1)]
    print(f"{name:<16} {len(answer.SerializeToString()):>7} bytes  "
          f"mean {statistics.fmean(times):.3f} ms  p50 {times[len(times) // 2]:.3f} ms  "
          f"p99 {p99:.3f} ms  max {times[-1]:.3f} ms", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    md = (("authorization", f"Bearer {args.key}"),)
    scoring = score_grpc.ScoringServiceStub(channel)
    registry = reg_grpc.DepartmentRegistryServiceStub(channel)
    indicators = ind_grpc.IndicatorServiceStub(channel)
    card = score_pb.GetScorecardRequest(region_code="330800", period="2026")
    measure("GetScorecard", lambda: scoring.GetScorecard(card, metadata=md, timeout=10), args.calls)
    departments = reg_pb.ListDepartmentsRequest(page_size=100)
    measure("ListDepartments",
            lambda: registry.ListDepartments(departments, metadata=md, timeout=10), args.calls)
    measure("GetCatalog",
            lambda: indicators.GetCatalog(ind_pb.GetCatalogRequest(), metadata=md, timeout=10),
            args.calls)
    channel.close()


if __name__ == "__main__":
    main()
