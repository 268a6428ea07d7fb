"""Small helpers shared by the tests: expected errors and their google.rpc details."""

import contextlib
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class Failure:
    """A failed call: its code, message and decoded google.rpc details."""

    code: grpc.StatusCode | None = None
    message: str = ""
    error_info: error_details_pb2.ErrorInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None
    detail_types: list[str] = field(default_factory=list)


@contextlib.contextmanager
def expect_failure(code: grpc.StatusCode):
    """Asserts that the block raises a gRPC error with `code`; yields its decoded Failure."""
    failure = Failure()
    try:
        yield failure
    except grpc.RpcError as err:
        failure.code = err.code()
        failure.message = err.details() or ""
        status = rpc_status.from_call(err)
        if status is not None:
            for any_ in status.details:
                failure.detail_types.append(any_.type_url.rsplit("/", 1)[-1])
                if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    failure.error_info = error_details_pb2.ErrorInfo()
                    any_.Unpack(failure.error_info)
                elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    failure.bad_request = error_details_pb2.BadRequest()
                    any_.Unpack(failure.bad_request)
    else:
        raise AssertionError(f"expected {code.name}, but the call succeeded")
    assert failure.code == code, f"expected {code.name}, got {failure.code.name}: {failure.message}"
    # The API promises an ErrorInfo (domain "citycredit") on every error.
    assert failure.error_info is not None, f"no ErrorInfo in {failure.detail_types} ({failure.message})"
    assert failure.error_info.domain == "citycredit", failure.error_info
