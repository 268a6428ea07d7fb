"""Serial calls through a real socket, as a department's script makes them, are not held back.

A response written as headers and message, then trailers, used to wait ~40 ms for the client's
delayed ACK whenever it was larger than a few TCP segments (Nagle's algorithm: the server did
not set TCP_NODELAY on accepted connections). A grpcio client calling GetScorecard one call at
a time waited 44 ms per call instead of well under one.
"""

import time

from citycredit.v1 import scoring_service_pb2 as score_pb

CALLS = 20
# Generous: a debug build on a busy 2-core machine answers in a few milliseconds; the stall alone
# was 40 ms.
BOUND_MS = 20.0


def test_serial_scorecards_do_not_wait_for_delayed_acks(admin):
    request = score_pb.GetScorecardRequest(region_code="330800", period="2026")
    first = admin.call(admin.scoring.GetScorecard, request)  # also fills the scorecard cache
    size = len(first.SerializeToString())
    assert size > 3000, f"the scorecard is {size} bytes: too small to show the stall"

    started = time.perf_counter()
    for _ in range(CALLS):
        admin.call(admin.scoring.GetScorecard, request)
    mean_ms = (time.perf_counter() - started) * 1000 / CALLS
    assert mean_ms < BOUND_MS, (
        f"{mean_ms:.1f} ms per serial GetScorecard of {size} bytes "
        f"(a Nagle and delayed-ACK stall costs ~40 ms)")
