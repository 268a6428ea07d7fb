"""A day of a department system's traffic: 市市场监管局 (samr) pushes its unified social credit
code figures hour by hour, retries after lost responses, corrects mistakes, trips over the
validation and the permission rules, and then reads back what the platform made of it.

The test keeps its own ledger of every acknowledged submission and derives every expectation
(current values, provenance, B01/B02 statuses by the rulebook's rules) from it, never from an
answer of the server.
"""

import os
from dataclasses import dataclass
from fractions import Fraction

import grpc
import pytest

from citycredit.v1 import (
    common_pb2 as common,
    department_registry_service_pb2 as reg_pb,
    metric_submission_service_pb2 as sub_pb,
    scoring_service_pb2 as score_pb,
)
from helpers import expect_failure

CITY = "330800"
# 2027: on the four-process topology this suite shares the server with the README examples,
# whose 2025 values carry forward to every period of 2026 (a LEVEL value reaches the 12 months
# after it; rulebook section 2, "Time"), and samr must be the only reporter here.
MONTH = "2027-11"
YEAR = "2027"
TOTAL = "uscc.stock_codes_total"
CONVERTED = "uscc.stock_codes_converted"
CODES = "uscc.codes_total"
BAD_CODES = "uscc.codes_duplicate_or_invalid"
USCC = [TOTAL, CONVERTED, CODES, BAD_CODES]
HOURS = range(8, 18)  # 08:00 .. 17:00


def figures(hour: int) -> dict[tuple[str, str], int]:
    """What samr's system knows at `hour`: conversion progresses, bad codes get cleaned up."""
    left = 17 - hour
    return {
        (MONTH, TOTAL): 43089,
        (MONTH, CONVERTED): 43000 - 12 * left,
        (MONTH, CODES): 344606 - 50 * left,
        (MONTH, BAD_CODES): 30 + 3 * left,
        (YEAR, TOTAL): 43089,
        (YEAR, CONVERTED): 43089 - 7 * left,
        (YEAR, CODES): 344606 - 50 * left,
        (YEAR, BAD_CODES): 40 + 2 * left,
    }


@dataclass
class Acked:
    """One submission the platform acknowledged."""

    id: int
    period: str
    metric: str
    number: str
    idempotency_key: str


class DepartmentSystem:
    """samr's reporting system: sends values and records what was acknowledged."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id
        self.ledger: list[Acked] = []

    def key(self, label: str) -> str:
        return f"samr-{self.run_id}-{label}"

    @staticmethod
    def value(period: str, metric: str, number, note: str = "") -> sub_pb.SubmissionInput:
        return sub_pb.SubmissionInput(metric_key=metric, region_code=CITY, period=period,
                                      value=common.MetricValue(number=str(number)), note=note)

    def submit(self, period, metric, number, label, note="", expect_replay=False):
        request = sub_pb.SubmitValueRequest(value=self.value(period, metric, number, note),
                                            idempotency_key=self.key(label))
        answer = self.client.call(self.client.submissions.SubmitValue, request)
        s = answer.submission
        assert answer.replayed is expect_replay
        assert s.name == f"submissions/{s.id}" and s.id > 0
        assert s.principal == self.client.principal
        assert s.idempotency_key == self.key(label)
        assert (s.input.metric_key, s.input.period, s.input.region_code) == (metric, period, CITY)
        assert s.input.value.number == str(number)
        # A department principal that leaves department_code empty reports for its own.
        assert s.input.department_code == "samr"
        assert s.accept_time.seconds > 0 and len(s.hash) == 64 and len(s.prev_hash) == 64
        if not expect_replay:
            assert all(a.id != s.id for a in self.ledger)
            self.ledger.append(Acked(s.id, period, metric, str(number), self.key(label)))
        return answer

    def batch(self, chunks, label, expect_replay=False):
        """Sends a SubmitBatch stream, one message per chunk of (period, metric, number)."""
        key = self.key(label)

        def stream():
            for i, chunk in enumerate(chunks):
                # The first message sets the key; later ones repeat it or leave it empty.
                yield sub_pb.SubmitBatchRequest(
                    idempotency_key=key if i % 2 == 0 else "",
                    values=[self.value(*v) for v in chunk])

        answer = self.client.call(self.client.submissions.SubmitBatch, stream())
        flat = [v for chunk in chunks for v in chunk]
        assert answer.replayed is expect_replay
        assert answer.accepted_count == len(flat)
        assert answer.last_submission_id - answer.first_submission_id + 1 == len(flat)
        assert answer.accept_time.seconds > 0
        if not expect_replay:
            for offset, (period, metric, number) in enumerate(flat):
                self.ledger.append(Acked(answer.first_submission_id + offset, period, metric,
                                         str(number), key))
        return answer

    def current(self) -> dict[tuple[str, str], Acked]:
        """The latest acknowledged submission per (period, metric): the current values."""
        latest: dict[tuple[str, str], Acked] = {}
        for a in sorted(self.ledger, key=lambda a: a.id):
            latest[(a.period, a.metric)] = a
        return latest


def b01_status(current) -> int:
    """Rulebook B01: converted / total >= 1; a total of 0 means nothing to convert (vacuous)."""
    total, converted = int(current[TOTAL].number), int(current[CONVERTED].number)
    if converted > total:
        return common.INDICATOR_STATUS_INVALID_DATA
    if total == 0 or Fraction(converted, total) >= 1:
        return common.INDICATOR_STATUS_PASS
    return common.INDICATOR_STATUS_FAIL


def b02_status(current) -> int:
    """Rulebook B02: duplicate-or-invalid / codes total < 1/10000, strictly."""
    codes, bad = int(current[CODES].number), int(current[BAD_CODES].number)
    if bad > codes:
        return common.INDICATOR_STATUS_INVALID_DATA
    if codes == 0 or Fraction(bad, codes) < Fraction(1, 10000):
        return common.INDICATOR_STATUS_PASS
    return common.INDICATOR_STATUS_FAIL


@pytest.fixture(scope="module")
def samr(make_client, run_id):
    client = make_client("samr-system", reg_pb.ROLE_DEPARTMENT, department_code="samr",
                         display_name="市市场监管局 数据报送系统")
    return DepartmentSystem(client, run_id)


def worklist_missing(client, period) -> dict[str, set[str]]:
    answer = client.call(client.scoring.GetDepartmentWorklist,
                         score_pb.GetDepartmentWorklistRequest(department="departments/samr",
                                                               period=period))
    assert answer.department_code == "samr"
    return {e.code: set(e.missing_metrics) for e in answer.entries}


def test_a_day_of_samr_traffic(samr, admin):
    client = samr.client

    # Morning: before anything is pushed, the worklist asks samr for B01's and B02's metrics
    # (unless an earlier run against the same long-lived server already reported them).
    if not os.environ.get("CITYCREDIT_ADDR"):
        before = worklist_missing(client, MONTH)
        assert {TOTAL, CONVERTED} <= before["B01"], before.get("B01")
        assert {CODES, BAD_CODES} <= before["B02"], before.get("B02")

    first_value = None
    for hour in HOURS:
        f = figures(hour)
        if hour % 2 == 0:
            # Even hours: one SubmitBatch stream, three messages, both periods.
            values = [(p, m, f[(p, m)]) for p in (MONTH, YEAR) for m in USCC]
            chunks = [values[:3], values[3:5], values[5:]]
            samr.batch(chunks, f"h{hour}-batch")
            if hour == 10:
                # The response was lost: the system sends the same batch again.
                n = len(samr.ledger)
                first = samr.ledger[-len(values)].id
                again = samr.batch(chunks, f"h{hour}-batch", expect_replay=True)
                assert (again.first_submission_id, again.last_submission_id) == (
                    first, first + len(values) - 1)
                assert len(samr.ledger) == n
        else:
            # Odd hours: one SubmitValue per figure.
            for p in (MONTH, YEAR):
                for m in USCC:
                    answer = samr.submit(p, m, f[(p, m)], f"h{hour}-{p}-{m}")
                    first_value = first_value or (answer, p, m, f[(p, m)], f"h{hour}-{p}-{m}")
            if hour == 9:
                # Lost responses: two values are sent again with the same key and payload.
                for p, m in ((MONTH, CONVERTED), (YEAR, BAD_CODES)):
                    original = next(a for a in samr.ledger if a.idempotency_key == samr.key(
                        f"h{hour}-{p}-{m}"))
                    again = samr.submit(p, m, f[(p, m)], f"h{hour}-{p}-{m}", expect_replay=True)
                    assert again.submission.id == original.id
        if hour == 12:
            # A typo (one digit too many) and its correction a minute later: the later value
            # supersedes the earlier one.
            samr.submit(MONTH, CONVERTED, f[(MONTH, CONVERTED)] * 10, "h12-typo",
                        note="月度转换数")
            samr.submit(MONTH, CONVERTED, f[(MONTH, CONVERTED)], "h12-typo-fix",
                        note="更正: 上一条多录一位")

    # A retry that is not a retry: an old key with another payload is refused.
    answer, p, m, number, label = first_value
    with expect_failure(grpc.StatusCode.ALREADY_EXISTS):
        samr.submit(p, m, number + 1, label)

    # End of day corrections: the year's bad-code count was recounted twice, the month's stock
    # total once (in a batch of its own).
    samr.submit(YEAR, BAD_CODES, 45, "eod-fix-1", note="复核后更正")
    samr.submit(YEAR, BAD_CODES, 41, "eod-fix-2", note="再次复核")
    samr.batch([[(MONTH, TOTAL, 43095)], [(MONTH, CONVERTED, 43001)]], "eod-fix-3")
    samr.batch([[(MONTH, TOTAL, 43095)], [(MONTH, CONVERTED, 43001)]], "eod-fix-3",
               expect_replay=True)

    # A batch checked before sending (validate_only): three bad values among six, in two
    # messages; every problem of every message is reported at once and nothing is stored.
    stored_before = len(list_all(client, page_size=50))
    bad = [
        samr.value(MONTH, TOTAL, 43095),
        samr.value(MONTH, CONVERTED, "43001.5"),      # a fraction for a COUNT
        samr.value(YEAR, CODES, 344606),
        samr.value(YEAR, BAD_CODES, "-3"),            # negative
        samr.value(MONTH, CODES, 344606),
        samr.value("2026-13", BAD_CODES, 30),         # no 13th month
    ]
    with expect_failure(grpc.StatusCode.INVALID_ARGUMENT) as failure:
        client.call(client.submissions.SubmitBatch, iter([
            sub_pb.SubmitBatchRequest(idempotency_key=samr.key("check"), validate_only=True,
                                      values=bad[:3]),
            sub_pb.SubmitBatchRequest(validate_only=True, values=bad[3:]),
        ]))
    assert failure.bad_request is not None, failure.detail_types
    paths = [v.field for v in failure.bad_request.field_violations]
    assert sorted(p.split(".")[0] for p in paths) == ["values[1]", "values[3]", "values[5]"], paths
    by_index = {p.split(".")[0]: p for p in paths}
    assert by_index["values[1]"].startswith("values[1].value"), paths
    assert by_index["values[3]"].startswith("values[3].value"), paths
    assert by_index["values[5]"] == "values[5].period", paths
    assert all(v.description for v in failure.bad_request.field_violations)
    assert len(list_all(client, page_size=50)) == stored_before

    # Not samr's to report: an assessed score.
    with expect_failure(grpc.StatusCode.PERMISSION_DENIED):
        client.call(client.submissions.SubmitValue, sub_pb.SubmitValueRequest(
            value=sub_pb.SubmissionInput(metric_key="campaign.integrity_tour", region_code=CITY,
                                         period=YEAR, value=common.MetricValue(number="1.5")),
            idempotency_key=samr.key("not-mine")))

    check_readback(samr, admin)


def list_all(client, page_size, **filters) -> list:
    """Every page of ListSubmissions for this caller's principal."""
    out, token, pages = [], "", 0
    while True:
        page = client.call(client.submissions.ListSubmissions, sub_pb.ListSubmissionsRequest(
            principal=client.principal, page_size=page_size, page_token=token, **filters))
        assert len(page.submissions) <= page_size
        out.extend(page.submissions)
        pages += 1
        assert pages < 1000, "pagination does not end"
        token = page.next_page_token
        if not token:
            return out


def check_readback(samr: DepartmentSystem, admin):
    client = samr.client
    acked = sorted((a.id for a in samr.ledger), reverse=True)
    # 10 hours x 8 values, 2 typo/fix, 2 + 2 end-of-day corrections.
    assert len(acked) == 10 * 8 + 2 + 4

    # ListSubmissions: exactly the acknowledged submissions, newest first, no duplicates, in
    # pages of 7.
    listed = list_all(client, page_size=7)
    assert [s.id for s in listed] == acked
    by_id = {a.id: a for a in samr.ledger}
    for s in listed:
        a = by_id[s.id]
        assert (s.input.period, s.input.metric_key, s.input.value.number, s.idempotency_key) == (
            a.period, a.metric, a.number, a.idempotency_key)
        assert s.principal == client.principal
    # Filters and a page size that divides nothing evenly agree.
    month_listed = list_all(client, page_size=13, period=MONTH, metric_key=CONVERTED)
    assert [s.id for s in month_listed] == sorted(
        (a.id for a in samr.ledger if (a.period, a.metric) == (MONTH, CONVERTED)), reverse=True)
    # The hash chain over everything stored is intact (admin only).
    chain = admin.call(admin.submissions.VerifyAuditChain, sub_pb.VerifyAuditChainRequest())
    assert chain.intact, chain
    assert chain.rows_checked >= len(acked)

    current = samr.current()
    for period in (MONTH, YEAR):
        cur = {m: current[(period, m)] for m in USCC}

        # Aggregates for the city: the latest value of each metric, and that submission alone
        # behind it (samr is the only reporter of these figures in this period).
        agg = client.call(client.submissions.QueryAggregates,
                          sub_pb.QueryAggregatesRequest(region_code=CITY, period=period))
        assert (agg.region_code, agg.period) == (CITY, period)
        figures_ = {m.metric_key: m for m in agg.metrics}
        for metric, a in cur.items():
            assert figures_[metric].value.number == a.number, (period, metric)
            assert [s.submission for s in figures_[metric].sources] == [f"submissions/{a.id}"]
            assert figures_[metric].sources[0].department_code == "samr"

        # The scorecard: B01 and B02 by the rulebook's rules over the final numbers.
        card = client.call(client.scoring.GetScorecard,
                           score_pb.GetScorecardRequest(region_code=CITY, period=period)).scorecard
        status = {i.code: i.status for i in card.indicators}
        expect_b01, expect_b02 = b01_status(cur), b02_status(cur)
        assert status["B01"] == expect_b01, (period, common.IndicatorStatus.Name(status["B01"]))
        assert status["B02"] == expect_b02, (period, common.IndicatorStatus.Name(status["B02"]))
        failing = [c for c, s in (("B01", expect_b01), ("B02", expect_b02))
                   if s == common.INDICATOR_STATUS_FAIL]
        assert [c for c in card.failing_basic if c in ("B01", "B02")] == failing
        if failing:
            assert card.outcome == common.OUTCOME_VETOED

        # ExplainIndicator: the submissions behind B01's figures are the current ones.
        explained = client.call(client.scoring.ExplainIndicator, score_pb.ExplainIndicatorRequest(
            region_code=CITY, period=period, indicator="indicators/B01"))
        assert explained.result.code == "B01"
        assert explained.result.status == expect_b01
        sources = {i.metric_key: [s.submission for s in i.sources]
                   for i in explained.result.inputs}
        assert sources == {TOTAL: [f"submissions/{cur[TOTAL].id}"],
                           CONVERTED: [f"submissions/{cur[CONVERTED].id}"]}
        assert explained.responsible[0].party == "departments/samr"
        if expect_b01 == common.INDICATOR_STATUS_FAIL:
            gap = [g for g in explained.result.gaps if g.metric_key == CONVERTED]
            short = int(cur[TOTAL].number) - int(cur[CONVERTED].number)
            assert gap and gap[0].change == f"+{short}", explained.result.gaps

        # The worklist no longer asks samr for B01's or B02's metrics.
        missing = worklist_missing(client, period)
        assert not missing["B01"] & {TOTAL, CONVERTED}, missing["B01"]
        assert not missing["B02"] & {CODES, BAD_CODES}, missing["B02"]

    # The final numbers were chosen so that the day ends with both outcomes: the month fails
    # B01 (43001 of 43095 converted) and passes B02 (30 in 344606), the year the reverse.
    assert b01_status({m: current[(MONTH, m)] for m in USCC}) == common.INDICATOR_STATUS_FAIL
    assert b02_status({m: current[(MONTH, m)] for m in USCC}) == common.INDICATOR_STATUS_PASS
    assert b01_status({m: current[(YEAR, m)] for m in USCC}) == common.INDICATOR_STATUS_PASS
    assert b02_status({m: current[(YEAR, m)] for m in USCC}) == common.INDICATOR_STATUS_FAIL
