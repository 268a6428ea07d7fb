"""Fixtures of the Python end-to-end suite.

The suite talks to one citycredit server, either

- given from outside: CITYCREDIT_ADDR ("host:port") and CITYCREDIT_ADMIN_KEY (an administrator's
  API key), e.g. a gateway in front of a multi-process topology; or
- started here: the all-in-one binary (SERVER_BIN, default target/debug/citycredit) on
  127.0.0.1:0 with SQLite in a temporary directory and a random bootstrap administrator key,
  stopped with SIGTERM when the session ends.

Every name the suite creates (principals, idempotency keys) carries a per-run suffix, so the
suite can run more than once against the same long-lived server.
"""

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# The generated stubs live in tests/python/gen/citycredit/v1/ without __init__.py files: with gen/
# on sys.path they import as the namespace package `citycredit.v1`, which is also the import path
# the generated *_pb2_grpc.py modules use among themselves.
_GEN = HERE / "gen"
if not (_GEN / "citycredit" / "v1" / "common_pb2.py").exists():
    raise RuntimeError(f"no generated stubs in {_GEN}: run `python {HERE / 'gen_stubs.py'}` first")
if str(_GEN) not in sys.path:
    sys.path.insert(0, str(_GEN))

from citycredit.v1 import (  # noqa: E402
    department_registry_service_pb2 as reg_pb,
    department_registry_service_pb2_grpc as reg_grpc,
    indicator_service_pb2_grpc as ind_grpc,
    metric_submission_service_pb2_grpc as sub_grpc,
    scoring_service_pb2_grpc as score_grpc,
)

STARTUP_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 20
_SERVING = re.compile(r"serving gRPC.*addr=([0-9.]+:[0-9]+)")


@dataclass
class Server:
    """Where the server is and the administrator's key."""

    addr: str
    admin_key: str
    log_path: Path | None = None


def _start_server(tmp: Path) -> tuple[subprocess.Popen, Server]:
    binary = Path(os.environ.get("SERVER_BIN", "target/debug/citycredit"))
    if not binary.is_absolute():
        binary = ROOT / binary
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"server binary {binary} is missing: build it with "
                           "`cargo build -p citycredit-app --bin citycredit`")
    admin_key = "cc_pytest_" + secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(CITYCREDIT_BOOTSTRAP_ADMIN_KEY=admin_key, RUST_LOG="info", NO_COLOR="1")
    log_path = tmp / "server.log"
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp / "data")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, errors="replace",
    )
    # A thread copies stderr into the log (so the pipe never fills) and reports the address.
    found: dict[str, str] = {}
    ready = threading.Event()

    def pump() -> None:
        with open(log_path, "w", encoding="utf-8") as log:
            for line in proc.stderr:
                log.write(line)
                log.flush()
                m = _SERVING.search(line)
                if m and not ready.is_set():
                    found["addr"] = m.group(1)
                    ready.set()
        ready.set()  # stderr closed: the process is gone

    threading.Thread(target=pump, name="citycredit-stderr", daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT_S) or "addr" not in found:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"server did not start; its log:\n{log_path.read_text(errors='replace')}")
    return proc, Server(addr=found["addr"], admin_key=admin_key, log_path=log_path)


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"server did not stop within {SHUTDOWN_TIMEOUT_S}s of SIGTERM")


@pytest.fixture(scope="session")
def server():
    addr = os.environ.get("CITYCREDIT_ADDR")
    if addr:
        key = os.environ.get("CITYCREDIT_ADMIN_KEY")
        if not key:
            raise RuntimeError("CITYCREDIT_ADDR is set but CITYCREDIT_ADMIN_KEY is not")
        yield Server(addr=addr, admin_key=key)
        return
    with tempfile.TemporaryDirectory(prefix="citycredit-pytest-") as tmp:
        proc, srv = _start_server(Path(tmp))
        try:
            yield srv
        finally:
            _stop_server(proc)
            # A clean SIGTERM shutdown exits 0; anything else is worth failing the run.
            assert proc.returncode == 0, (
                f"server exited with {proc.returncode}; its log:\n"
                f"{srv.log_path.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def channel(server):
    ch = grpc.insecure_channel(server.addr)
    grpc.channel_ready_future(ch).result(timeout=10)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def run_id():
    """A suffix that makes this run's names unique on a long-lived server."""
    return secrets.token_hex(4)


class Client:
    """The platform's services as one caller (one API key) sees them."""

    TIMEOUT_S = 30

    def __init__(self, channel: grpc.Channel, key: str | None):
        self.key = key
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self.registry = reg_grpc.DepartmentRegistryServiceStub(channel)
        self.indicators = ind_grpc.IndicatorServiceStub(channel)
        self.submissions = sub_grpc.MetricSubmissionServiceStub(channel)
        self.scoring = score_grpc.ScoringServiceStub(channel)

    def call(self, method, request, **kw):
        """Calls a unary (or client-streaming, with an iterator) RPC with this caller's key."""
        return method(request, metadata=self.metadata, timeout=self.TIMEOUT_S, **kw)

    def call_with_call(self, method, request):
        """Like call, but returns (response, call) to read the trailing metadata too."""
        return method.with_call(request, metadata=self.metadata, timeout=self.TIMEOUT_S)


@pytest.fixture(scope="session")
def admin(channel, server):
    return Client(channel, server.admin_key)


@pytest.fixture(scope="session")
def make_client(channel, admin, run_id):
    """Creates a principal (id suffixed with the run id) and a key; returns its Client."""

    def make(principal_id: str, role: int, department_code: str = "", display_name: str = ""):
        pid = f"{principal_id}-{run_id}"
        created = admin.call(admin.registry.CreatePrincipal, reg_pb.CreatePrincipalRequest(
            principal=reg_pb.Principal(id=pid, display_name=display_name or pid, role=role,
                                       department_code=department_code)))
        assert created.principal.name == f"principals/{pid}"
        assert created.principal.role == role
        key = admin.call(admin.registry.CreateApiKey,
                         reg_pb.CreateApiKeyRequest(principal=created.principal.name))
        assert key.secret, "CreateApiKey returned no secret"
        assert key.api_key.principal == created.principal.name
        client = Client(channel, key.secret)
        client.principal = created.principal.name
        return client

    return make
