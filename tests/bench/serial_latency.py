"""Serial (one call in flight) latency as a grpcio client sees it, through a real socket.

Run by `citycredit-bench serial-latency` and `citycredit-bench client-latency` with the venv of
tests/python/run.sh (it creates target/ci-tools/pyvenv and the stubs in tests/python/gen):

    python tests/bench/serial_latency.py --addr 127.0.0.1:50051 --key <admin key> --calls 500
        the quick set: GetScorecard, ListDepartments, GetCatalog.
    python tests/bench/serial_latency.py --addr ... --key ... --workload client --echo ADDR
        the RPCs users call often (--shape bench|wide: which departments report; SubmitValue, SubmitBatch of 100, GetScorecard cached and
        uncached, ExplainIndicator, GetDepartmentWorklist, QueryAggregates), each beside the
        echo anchor at ADDR called with a request and an answer of the same sizes.

Prints one line per RPC: request and response sizes, p50/p90/p99 and max in milliseconds and,
with --echo, the anchor's p50/p99 and the ratios. Any RPC error, or an answer that is not what
was asked for, ends the run with exit status 1 (a benchmark of failures is not a benchmark);
a missing venv ends it with exit status 2.
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python" / "gen"))

try:
    import grpc  # noqa: E402

    from citycredit.v1 import (  # noqa: E402
        common_pb2 as common,
        department_registry_service_pb2 as reg_pb,
        department_registry_service_pb2_grpc as reg_grpc,
        indicator_service_pb2 as ind_pb,
        indicator_service_pb2_grpc as ind_grpc,
        metric_submission_service_pb2 as sub_pb,
        metric_submission_service_pb2_grpc as sub_grpc,
        scoring_service_pb2 as score_pb,
        scoring_service_pb2_grpc as score_grpc,
    )
except ImportError as err:
    print(f"serial_latency.py: {err}: run tests/python/run.sh once (from the repository root) "
          "to create the venv (target/ci-tools/pyvenv) and the stubs, then use its python",
          file=sys.stderr)
    sys.exit(2)

TIMEOUT_S = 10
# The path of the bench's echo anchor (tests/bench/echo.rs).
ECHO_PATH = "/citycredit.bench.Echo/Echo"
REGIONS = ["330800", "330802", "330803", "330822", "330824", "330825", "330881"]
PERIOD = "2026"
# The departments of `citycredit-bench aggregate` (tests/bench/main.rs DEPARTMENTS).
BENCH_DEPARTMENTS = ["samr", "tax", "court", "civil-affairs", "business-env"]


class Failed(Exception):
    """An answer that is not what was asked for."""


def percentile(times, q):
    """Nearest rank: the smallest time at or above q of the calls."""
    return times[max(0, math.ceil(len(times) * q) - 1)]


class Bench:
    def __init__(self, args):
        self.calls = args.calls
        self.echo = None
        if args.echo:
            echo_channel = grpc.insecure_channel(args.echo)
            grpc.channel_ready_future(echo_channel).result(timeout=TIMEOUT_S)
            # No serializers: bytes in, bytes out.
            self.echo = echo_channel.unary_unary(ECHO_PATH)

    def timed(self, call, calls):
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return times

    def echo_times(self, request_bytes, response_bytes, calls):
        """The anchor: a bare tonic unary call with a request and an answer of these sizes."""
        head = f"{response_bytes};".encode()
        request = head + b"x" * max(0, request_bytes - len(head))

        def call():
            answer = self.echo(request, timeout=TIMEOUT_S)
            if len(answer) != response_bytes:
                raise Failed(f"echo answered {len(answer)} bytes, not {response_bytes}")

        call()
        return self.timed(call, calls)

    def report(self, name, request_bytes, response_bytes, times):
        line = (f"{name:<26} req {request_bytes:>6} B  resp {response_bytes:>6} B  "
                f"p50 {percentile(times, 0.50):7.3f}  p90 {percentile(times, 0.90):7.3f}  "
                f"p99 {percentile(times, 0.99):7.3f}  max {times[-1]:7.3f} ms")
        if self.echo is not None:
            echo = self.echo_times(request_bytes, response_bytes, len(times))
            e50, e99 = percentile(echo, 0.50), percentile(echo, 0.99)
            line += (f"  | echo p50 {e50:6.3f}  p99 {e99:6.3f} ms"
                     f"  | x{percentile(times, 0.50) / e50:6.1f} p50  x{percentile(times, 0.99) / e99:6.1f} p99")
        print(line, flush=True)

    def measure(self, name, request, call, calls=None):
        """Warms up once (connection, caches), then `calls` serial calls."""
        answer = call()
        times = self.timed(call, calls or self.calls)
        self.report(name, request.ByteSize(), answer.ByteSize(), times)


def quick(bench, channel, md):
    scoring = score_grpc.ScoringServiceStub(channel)
    registry = reg_grpc.DepartmentRegistryServiceStub(channel)
    indicators = ind_grpc.IndicatorServiceStub(channel)
    card = score_pb.GetScorecardRequest(region_code="330800", period=PERIOD)
    bench.measure("GetScorecard", card,
                  lambda: scoring.GetScorecard(card, metadata=md, timeout=TIMEOUT_S))
    departments = reg_pb.ListDepartmentsRequest(page_size=100)
    bench.measure("ListDepartments", departments,
                  lambda: registry.ListDepartments(departments, metadata=md, timeout=TIMEOUT_S))
    catalog = ind_pb.GetCatalogRequest()
    bench.measure("GetCatalog", catalog,
                  lambda: indicators.GetCatalog(catalog, metadata=md, timeout=TIMEOUT_S))


def platform_key(channel, md):
    """A platform principal of this run and its key (retried while the services come up)."""
    registry = reg_grpc.DepartmentRegistryServiceStub(channel)
    pid = f"bench-client-{os.getpid()}"
    deadline = time.monotonic() + 30
    while True:
        try:
            created = registry.CreatePrincipal(reg_pb.CreatePrincipalRequest(
                principal=reg_pb.Principal(id=pid, role=reg_pb.ROLE_PLATFORM)),
                metadata=md, timeout=TIMEOUT_S)
            break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    key = registry.CreateApiKey(reg_pb.CreateApiKeyRequest(principal=created.principal.name),
                                metadata=md, timeout=TIMEOUT_S)
    if not key.secret:
        raise Failed("CreateApiKey returned no secret")
    return (("authorization", f"Bearer {key.secret}"),)


def client(bench, channel, md, shape):
    """The RPCs users call often, one call in flight each. The values: COUNT metrics over every
    region, from the 5 departments of `citycredit-bench aggregate` (shape "bench": at most
    44 x 7 x 5 = 1,540 current values, that benchmark's shape) or from every department (shape
    "wide": at most 44 x 7 x 50 = 15,400, every department reporting every COUNT metric)."""
    submissions = sub_grpc.MetricSubmissionServiceStub(channel)
    scoring = score_grpc.ScoringServiceStub(channel)
    indicators = ind_grpc.IndicatorServiceStub(channel)
    registry = reg_grpc.DepartmentRegistryServiceStub(channel)
    pmd = platform_key(channel, md)
    metrics = indicators.ListMetrics(ind_pb.ListMetricsRequest(), metadata=md, timeout=TIMEOUT_S)
    counts = [m.key for m in metrics.metrics if m.kind == common.METRIC_KIND_COUNT]
    departments = [d.code for d in registry.ListDepartments(
        reg_pb.ListDepartmentsRequest(page_size=100), metadata=md, timeout=TIMEOUT_S).departments]
    if shape == "bench":
        departments = [d for d in BENCH_DEPARTMENTS if d in departments]
    if not counts or not departments:
        raise Failed(f"{len(counts)} COUNT metrics, {len(departments)} departments")
    seq = [0]

    def value():
        """The next value: COUNT metrics over every region and department, so values supersede
        each other as they do in real use."""
        i = seq[0]
        seq[0] += 1
        return sub_pb.SubmissionInput(
            metric_key=counts[i % len(counts)],
            region_code=REGIONS[(i // len(counts)) % len(REGIONS)],
            period=PERIOD,
            department_code=departments[(i // 7) % len(departments)],
            value=common.MetricValue(number=str(i % 100_000)))

    # SubmitBatch of 100 first: it also loads the data the reads below read.
    def batch_request():
        return sub_pb.SubmitBatchRequest(values=[value() for _ in range(100)])

    def submit_batch(request):
        answer = submissions.SubmitBatch(iter([request]), metadata=pmd, timeout=TIMEOUT_S)
        if answer.accepted_count != 100:
            raise Failed(f"SubmitBatch accepted {answer.accepted_count} of 100")
        return answer

    requests = [batch_request() for _ in range(bench.calls + 1)]
    answer = submit_batch(requests[0])
    times = []
    for request in requests[1:]:
        started = time.perf_counter()
        submit_batch(request)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    bench.report("SubmitBatch (100 values)", requests[1].ByteSize(), answer.ByteSize(), times)

    def submit_value():
        request = sub_pb.SubmitValueRequest(value=value())
        answer = submissions.SubmitValue(request, metadata=pmd, timeout=TIMEOUT_S)
        if not answer.submission.name:
            raise Failed("SubmitValue stored nothing")
        return answer

    probe = sub_pb.SubmitValueRequest(value=value())
    bench.measure("SubmitValue", probe, submit_value)

    card = score_pb.GetScorecardRequest(region_code="330800", period=PERIOD)

    def get_card():
        answer = scoring.GetScorecard(card, metadata=md, timeout=TIMEOUT_S)
        if len(answer.scorecard.indicators) == 0:
            raise Failed("a scorecard without indicators")
        return answer

    bench.measure("GetScorecard cached", card, get_card)

    # Uncached: a value of the city changes before each call (not timed), then the call is
    # timed; the answer's as_of must be newer than the previous answer's, which a cached
    # scorecard's is not. Calls that still met the cache (the invalidation had not landed)
    # are counted and left out; a pause of 20 ms after each change lets it land.
    times, hits = [], 0
    last = get_card().scorecard.as_of.ToNanoseconds()
    answer = None
    for _ in range(bench.calls):
        submit_value()
        time.sleep(0.02)
        started = time.perf_counter()
        answer = get_card()
        elapsed = (time.perf_counter() - started) * 1000
        now = answer.scorecard.as_of.ToNanoseconds()
        if now > last:
            times.append(elapsed)
        else:
            hits += 1
        last = now
    if len(times) < bench.calls // 2:
        raise Failed(f"only {len(times)} of {bench.calls} 'uncached' scorecards were computed")
    times.sort()
    bench.report("GetScorecard uncached", card.ByteSize(), answer.ByteSize(), times)
    print(f"  (uncached: a value changes before each call; {len(times)} calls computed afresh, "
          f"{hits} met the cache and are left out)", flush=True)

    explain = score_pb.ExplainIndicatorRequest(region_code="330800", period=PERIOD,
                                               indicator="B01")
    bench.measure("ExplainIndicator", explain,
                  lambda: scoring.ExplainIndicator(explain, metadata=md, timeout=TIMEOUT_S))
    worklist = score_pb.GetDepartmentWorklistRequest(department="samr", period=PERIOD)

    def get_worklist():
        answer = scoring.GetDepartmentWorklist(worklist, metadata=md, timeout=TIMEOUT_S)
        if not answer.entries:
            raise Failed("an empty worklist for samr")
        return answer

    bench.measure("GetDepartmentWorklist", worklist, get_worklist)
    aggregates = sub_pb.QueryAggregatesRequest(region_code="330800", period=PERIOD)

    def query():
        answer = submissions.QueryAggregates(aggregates, metadata=md, timeout=TIMEOUT_S)
        if not answer.metrics:
            raise Failed("no aggregates for the city")
        return answer

    bench.measure("QueryAggregates", aggregates, query)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--workload", choices=["quick", "client"], default="quick")
    parser.add_argument("--echo", help="address of the bench's echo anchor")
    parser.add_argument("--shape", choices=["bench", "wide"], default="bench",
                        help="which departments report (see client())")
    args = parser.parse_args()
    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
    md = (("authorization", f"Bearer {args.key}"),)
    bench = Bench(args)
    try:
        if args.workload == "quick":
            quick(bench, channel, md)
        else:
            client(bench, channel, md, args.shape)
    except grpc.RpcError as err:
        print(f"serial_latency.py: RPC failed: {err.code()}: {err.details()}", file=sys.stderr)
        sys.exit(1)
    except Failed as err:
        print(f"serial_latency.py: {err}", file=sys.stderr)
        sys.exit(1)
    channel.close()


if __name__ == "__main__":
    main()
