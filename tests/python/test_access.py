"""Health, authentication and the operator's read-only role, as an operator meets them."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from citycredit.v1 import (
    common_pb2 as common,
    department_registry_service_pb2 as reg_pb,
    indicator_service_pb2 as ind_pb,
    metric_submission_service_pb2 as sub_pb,
    scoring_service_pb2 as score_pb,
)
from conftest import Client
from helpers import expect_failure


def test_health_is_serving_without_a_key(channel):
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_call_without_a_key_is_unauthenticated(channel):
    anonymous = Client(channel, None)
    with expect_failure(grpc.StatusCode.UNAUTHENTICATED):
        anonymous.call(anonymous.indicators.GetCatalog, ind_pb.GetCatalogRequest())
    with expect_failure(grpc.StatusCode.UNAUTHENTICATED):
        anonymous.call(anonymous.submissions.SubmitValue, sub_pb.SubmitValueRequest(
            value=sub_pb.SubmissionInput(metric_key="uscc.codes_total", region_code="330800",
                                         period="2026", value=common.MetricValue(number="1"))))


def test_a_call_with_an_unknown_key_is_unauthenticated(channel):
    stranger = Client(channel, "cc_not_a_key_0123456789abcdef0123456789abcdef")
    with expect_failure(grpc.StatusCode.UNAUTHENTICATED):
        stranger.call(stranger.indicators.GetCatalog, ind_pb.GetCatalogRequest())


def test_an_operator_reads_but_cannot_submit(make_client):
    operator = make_client("ops-desk", reg_pb.ROLE_OPERATOR, display_name="值班运维")

    catalog = operator.call(operator.indicators.GetCatalog, ind_pb.GetCatalogRequest())
    assert catalog.version
    indicators = operator.call(operator.indicators.ListIndicators, ind_pb.ListIndicatorsRequest())
    assert [i.code for i in indicators.indicators] == (
        [f"B{n:02d}" for n in range(1, 11)] + [f"G{n}" for n in range(11, 21)])
    operator.call(operator.submissions.ListSubmissions, sub_pb.ListSubmissionsRequest(page_size=5))
    card = operator.call(operator.scoring.GetScorecard,
                         score_pb.GetScorecardRequest(region_code="330800", period="2026-Q1"))
    assert [i.code for i in card.scorecard.indicators] == [i.code for i in indicators.indicators]

    with expect_failure(grpc.StatusCode.PERMISSION_DENIED):
        operator.call(operator.submissions.SubmitValue, sub_pb.SubmitValueRequest(
            value=sub_pb.SubmissionInput(metric_key="uscc.codes_total", region_code="330800",
                                         period="2026-Q1", value=common.MetricValue(number="10")),
            idempotency_key="ops-desk-should-not-write"))
    nothing = operator.call(operator.submissions.ListSubmissions, sub_pb.ListSubmissionsRequest(
        principal=operator.principal))
    assert list(nothing.submissions) == []
    # Nor may an operator administer the registry.
    with expect_failure(grpc.StatusCode.PERMISSION_DENIED):
        operator.call(operator.registry.CreatePrincipal, reg_pb.CreatePrincipalRequest(
            principal=reg_pb.Principal(id="ops-escalation", role=reg_pb.ROLE_ADMIN)))


def test_a_department_cannot_retract_another_departments_value(make_client):
    samr = make_client("samr-retract", reg_pb.ROLE_DEPARTMENT, department_code="samr")
    court = make_client("court-retract", reg_pb.ROLE_DEPARTMENT, department_code="court")
    value = sub_pb.SubmissionInput(metric_key="uscc.codes_total", region_code="330800",
                                   period="2024-Q4", value=common.MetricValue(number="344606"))
    stored = samr.call(samr.submissions.SubmitValue, sub_pb.SubmitValueRequest(
        value=value, idempotency_key=f"{samr.principal}-codes")).submission
    # court may not report for samr ...
    with expect_failure(grpc.StatusCode.INVALID_ARGUMENT):
        court.call(court.submissions.SubmitValue, sub_pb.SubmitValueRequest(
            value=sub_pb.SubmissionInput(metric_key="uscc.codes_total", region_code="330800",
                                         period="2024-Q4", department_code="samr",
                                         value=common.MetricValue(number="0")),
            idempotency_key=f"{court.principal}-codes"))
    # ... so it may not take samr's figure away either.
    with expect_failure(grpc.StatusCode.PERMISSION_DENIED):
        court.call(court.submissions.RetractSubmission, sub_pb.RetractSubmissionRequest(
            name=stored.name, reason="不是我们的数据", idempotency_key=f"{court.principal}-r"))
