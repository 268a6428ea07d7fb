"""The credit sharing platform and an assessor fill in a complete case: the first published
golden case (tests/fixtures/golden/public-cases.json), pushed through the API in a period of its
own, must score exactly as the file expects.
"""

import json
from pathlib import Path

import grpc

from citycredit.v1 import (
    common_pb2 as common,
    department_registry_service_pb2 as reg_pb,
    indicator_service_pb2 as ind_pb,
    metric_submission_service_pb2 as sub_pb,
    scoring_service_pb2 as score_pb,
)

ROOT = Path(__file__).resolve().parent.parent.parent
CASES = ROOT / "tests" / "fixtures" / "golden" / "public-cases.json"
# The golden case's own period is "2026", which the README examples reach; this test
# scores the same values in a period nobody else touches.
PERIOD = "2025-Q2"
BATCH_CHUNK = 10


def metric_kinds(client) -> dict[str, int]:
    answer = client.call(client.indicators.ListMetrics, ind_pb.ListMetricsRequest())
    return {m.key: m.kind for m in answer.metrics}


def as_input(key, value, kind, region, domain="") -> sub_pb.SubmissionInput:
    if kind in (common.METRIC_KIND_BOOL, common.METRIC_KIND_DOMAIN_FLAG):
        assert isinstance(value, bool), (key, value)
        v = common.MetricValue(flag=value)
    else:
        assert not isinstance(value, bool), (key, value)
        v = common.MetricValue(number=str(value))
    return sub_pb.SubmissionInput(metric_key=key, region_code=region, period=PERIOD,
                                  domain=domain, value=v)


def test_first_golden_case_scores_as_published(admin, make_client, run_id):
    case = json.loads(CASES.read_text(encoding="utf-8"))[0]
    region, expect = case["region"], case["expect"]
    kinds = metric_kinds(admin)

    # The joint reward-and-punishment domain set is open and starts empty: register the case's
    # domains first (a rerun against the same server finds them registered).
    jrp = sorted({d for key, domains in case["domain_flags"].items() if key.startswith("joint_rp.")
                  for d in domains})
    for code in jrp:
        try:
            answer = admin.call(admin.registry.RegisterDomain, reg_pb.RegisterDomainRequest(
                domain=reg_pb.RegisteredDomain(domain_set="joint_reward_punishment", code=code,
                                               display_name=f"联合奖惩领域 {code}")))
            assert answer.domain.code == code and not answer.domain.builtin
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
    listed = admin.call(admin.registry.ListDomains,
                        reg_pb.ListDomainsRequest(domain_set="joint_reward_punishment"))
    assert set(jrp) <= {d.code for d in listed.domains}

    platform = make_client("credit-platform", reg_pb.ROLE_PLATFORM, display_name="信用信息共享平台")
    assessor = make_client("assessor", reg_pb.ROLE_ASSESSOR, display_name="第三方评估机构")

    platform_values, assessed = [], []
    for key, value in case["values"].items():
        item = as_input(key, value, kinds[key], region)
        (assessed if kinds[key] == common.METRIC_KIND_SCORE else platform_values).append(item)
    for key, domains in case["domain_flags"].items():
        assert kinds[key] == common.METRIC_KIND_DOMAIN_FLAG, key
        platform_values.extend(as_input(key, True, kinds[key], region, d) for d in domains)
    assert {v.metric_key for v in assessed} == {"campaign.integrity_tour",
                                                 "campaign.special_governance"}

    # The platform: everything but the assessed scores, in one batch of several messages.
    chunks = [platform_values[i:i + BATCH_CHUNK]
              for i in range(0, len(platform_values), BATCH_CHUNK)]
    answer = platform.call(platform.submissions.SubmitBatch, iter(
        sub_pb.SubmitBatchRequest(idempotency_key=f"golden-{run_id}", values=chunk)
        for chunk in chunks))
    assert answer.accepted_count == len(platform_values)
    assert not answer.replayed

    # The assessor: the two scores, one call each.
    for item in assessed:
        answer = assessor.call(assessor.submissions.SubmitValue, sub_pb.SubmitValueRequest(
            value=item, idempotency_key=f"golden-{run_id}-{item.metric_key}"))
        assert answer.submission.input.value.number == item.value.number

    card = admin.call(admin.scoring.GetScorecard, score_pb.GetScorecardRequest(
        region_code=region, period=PERIOD)).scorecard
    assert (card.region_code, card.period) == (region, PERIOD)
    assert common.Outcome.Name(card.outcome) == f"OUTCOME_{expect['outcome']}"
    assert card.guiding_total == expect["guiding_total"]
    assert card.guiding_max == "54.00"
    assert list(card.violations) == []
    got = {i.code: i for i in card.indicators}
    assert set(got) == set(expect["indicators"])
    mismatches = []
    for code, want in expect["indicators"].items():
        status = common.IndicatorStatus.Name(got[code].status)
        if status != f"INDICATOR_STATUS_{want['status']}":
            mismatches.append(f"{code}: status {status}, expected {want['status']}")
        if "score" in want and got[code].score != want["score"]:
            mismatches.append(f"{code}: score {got[code].score}, expected {want['score']}")
    assert not mismatches, "\n".join(mismatches)
