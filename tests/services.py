"""Real services for production-mode tests, each on 127.0.0.1 on a free port.

- ``postgres()``: a PostgreSQL server (Debian's package) in a temporary data directory;
- ``s3()``: an S3-compatible store (moto's server mode);
- ``mlflow_server(backend_uri, artifacts, auth=True)``: `mlflow server`, optionally with
  basic auth (`--app-name basic-auth`) and proxied artifacts (`--artifacts-destination`);
- ``RestartableMlflow``: `mlflow server` on a sqlite store, killed and started again on the
  same store and port (the tracking outage tests).

The first three are context managers: each starts its service, polls it until it answers (with a
deadline, never a bare sleep), yields a small handle and stops exactly the processes
it started. The session-scoped fixtures at the bottom wrap them. A missing binary
skips the test, and under CI=true fails it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.conftest import ON_CI

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120.0


def missing(what: str) -> None:
    """A service the test needs is not installed: fail under CI, skip elsewhere."""
    if ON_CI:
        pytest.fail(f"{what} (CI=true: services must be installed: make system, or scripts/system-deps.sh)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_until(ready: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S,
               proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``ready()`` until it is true; fail at the deadline or as soon as ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log) if log else ''}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s:\n{tail(log) if log else ''}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    import requests

    return requests.get(url, timeout=timeout_s).status_code == 200


def start(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """A service process as the leader of its own session, so that ``stop`` ends it and its children."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the session ``proc`` leads, as a lost machine would.

    The session, not the process group: Ray puts each worker in a group of its own, and
    a trial or training worker that outlived its driver would go on writing checkpoints.
    """
    members = [p for p in psutil.process_iter() if _session(p.pid) == proc.pid]
    _kill_all(members)
    proc.wait(30)
    _wait_gone(members, f"the processes of session {proc.pid}")


def kill_local_ray(root: Path) -> None:
    """SIGKILL the project's warm local Ray (``execution.local_ray``), as a lost machine would.

    It runs in a session of its own, so ``kill`` of a command leaves it up; and a search's
    trial outlives its killed driver there for a moment, long enough to write one more
    checkpoint over what a test arranges on disk.
    """
    from runyard.execution import local_ray

    state = local_ray.read_state(root / ".runyard")
    members = local_ray.processes(state) if state else []
    _kill_all(members)
    _wait_gone(members, f"the local Ray of {root}")


def _kill_all(processes: list) -> None:
    for p in processes:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _wait_gone(processes: list, what: str) -> None:
    wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes),
               f"{what} to end", 30)


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:  # gone meanwhile
        return None


def wait_port_free(port: int, timeout_s: float = 30.0) -> None:
    """Until nothing listens on 127.0.0.1:``port`` (a killed server's workers may linger)."""
    def free() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) != 0

    wait_until(free, f"port {port} to be free", timeout_s)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group this module started, then SIGKILL it after ``grace_s``."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
            return


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server binaries (/usr/lib/postgresql/<version>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres", scheme: str = "postgresql+psycopg2") -> str:
        """An SQLAlchemy URL (MLflow, Optuna); ``scheme="postgresql"`` for libpq clients.
        The driver is explicit: SQLAlchemy 2.1's default for postgresql:// is psycopg 3."""
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg2

        conn = psycopg2.connect(self.url(scheme="postgresql"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


@contextlib.contextmanager
def postgres(timeout_s: float = 60.0) -> Iterator[Postgres]:
    """A PostgreSQL server on 127.0.0.1 (password auth over TCP) in a temporary data dir.

    initdb and pg_ctl refuse to run as root: as root they run as the `postgres` system
    user (runuser), in a directory that user owns."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        missing("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="runyard-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            missing("runuser not found: needed to run PostgreSQL as the postgres user")
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            missing("no `postgres` system user (apt-get install postgresql creates it)")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    pg = Postgres(port=free_port(), user="runyard", password=secrets.token_hex(12))
    data, log, pwfile = root / "data", root / "server.log", root / "pwfile"
    pwfile.write_text(pg.password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres")
    try:
        subprocess.run(
            [*as_user, bin_dir / "initdb", "-D", data, "-U", pg.user, "--pwfile", pwfile,
             "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=timeout_s,
        )
        options = (f"-c listen_addresses=127.0.0.1 -c port={pg.port} -c unix_socket_directories={root} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        # pg_ctl -w waits until the server accepts connections (or -t seconds pass).
        started = subprocess.run(
            [*as_user, bin_dir / "pg_ctl", "start", "-D", data, "-l", log, "-o", options,
             "-w", "-t", str(int(timeout_s))],
            capture_output=True, text=True, timeout=timeout_s + 10,
        )
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started.stderr}\n{tail(log)}")
        yield pg
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, bin_dir / "pg_ctl", "stop", "-D", data, "-m", "fast", "-w"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- S3 (moto)


@dataclass
class S3:
    endpoint: str
    env: dict[str, str] = field(default_factory=dict)
    """What a client needs: AWS credentials, region, and MLflow's endpoint variable."""

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str) -> str:
        """A new bucket; returns ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


@contextlib.contextmanager
def s3(timeout_s: float = 60.0) -> Iterator[S3]:
    """moto's S3-compatible server on 127.0.0.1 (state in memory, gone when it stops)."""
    moto = BIN / "moto_server"
    if not moto.is_file():
        missing(f"moto_server not installed next to {sys.executable} (pip install 'moto[server]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="runyard-s3-") as tmp:
        log = Path(tmp) / "moto.log"
        proc = start([str(moto), "-H", "127.0.0.1", "-p", str(port)], log)
        try:
            wait_until(lambda: http_ok(f"{endpoint}/moto-api/"), "moto_server", timeout_s, proc, log)
            yield S3(endpoint, {
                "AWS_ACCESS_KEY_ID": "runyard-test", "AWS_SECRET_ACCESS_KEY": "runyard-test-secret",
                "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint,
            })
        finally:
            stop(proc)


# --------------------------------------------------------------------------- MLflow tracking server


@dataclass
class MlflowServer:
    url: str
    username: str | None
    password: str | None
    log: Path
    process: subprocess.Popen
    """The server's process (leader of its own session): ``stop(server.process)`` takes it down."""

    @property
    def env(self) -> dict[str, str]:
        """A client's environment: the tracking URI and, with auth on, the admin's credentials."""
        env = {"MLFLOW_TRACKING_URI": self.url}
        if self.username:
            env |= {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}
        return env


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: str, auth: bool = True, env: dict[str, str] | None = None,
                  auth_db_uri: str | None = None, timeout_s: float = START_TIMEOUT_S) -> Iterator[MlflowServer]:
    """`mlflow server` on ``backend_uri`` (e.g. a PostgreSQL URL) serving its artifacts from
    ``artifacts`` (``s3://bucket/prefix`` with the S3 variables in ``env``, or a local path).

    With ``auth``, basic auth is on: an `admin` user with a random password, its user
    store in ``auth_db_uri`` (default: a sqlite file next to the server's log)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="runyard-mlflow-") as tmp:
        log = Path(tmp) / "server.log"
        server_env = dict(env or {})
        app_name = None
        username = password = None
        if auth:
            username, password = "admin", secrets.token_urlsafe(16)
            ini, auth_db = Path(tmp) / "basic_auth.ini", auth_db_uri or f"sqlite:///{Path(tmp) / 'auth.db'}"
            ini.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {auth_db}\n"
                f"admin_username = {username}\nadmin_password = {password}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                # Check a password once per 10 minutes, not on every request: the hash is slow by
                # design, and on a loaded 2-core machine it took seconds per request.
                "auth_cache_ttl_seconds = 600\n"
            )
            server_env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            # The auth app's CSRF protection refuses to start without a static key.
            server_env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(16))
            app_name = "basic-auth"
        proc = start_mlflow(port, backend_uri, artifacts, log, server_env, Path(tmp), app_name)
        try:
            wait_mlflow(url, proc, log, timeout_s)
            yield MlflowServer(url, username, password, log, proc)
        finally:
            stop(proc)


def start_mlflow(port: int, backend_uri: str, artifacts: str, log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, app_name: str | None = None) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:``port``, one worker, proxying artifacts to ``artifacts``.
    The bare process, for a test that stops and restarts it; most want ``mlflow_server``."""
    mlflow = BIN / "mlflow"
    if not mlflow.is_file():
        missing(f"mlflow not installed next to {sys.executable}")
    cmd = [str(mlflow), "server", "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if app_name:
        cmd += ["--app-name", app_name]
    # No job runner (GenAI judges: seven queue consumers): a faster start and restart.
    return start(cmd, log, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}, cwd)


def wait_mlflow(url: str, proc: subprocess.Popen | None = None, log: Path | None = None,
                timeout_s: float = START_TIMEOUT_S) -> None:
    """Until the server at ``url`` answers /health (``proc`` exiting first is an error)."""
    wait_until(lambda: http_ok(f"{url}/health"), f"mlflow server at {url}", timeout_s, proc, log)


# --------------------------------------------------------------------------- fixtures


class RestartableMlflow:
    """`mlflow server` on one sqlite store (+ artifacts) and one port, SIGKILLed and started
    again on the same store and port: a tracking server outage, for the chaos tests."""

    def __init__(self, tmp: Path, start_timeout_s: float = 300.0):
        self.db, self.port = tmp / "mlflow.db", free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp, self.proc, self.start_timeout_s = tmp, None, start_timeout_s

    def start(self) -> None:
        # Generous by default: on a loaded 2-core machine `mlflow server` can take minutes to start.
        log = self.tmp / "server.log"
        self.proc = start_mlflow(self.port, f"sqlite:///{self.db}", str(self.tmp / "artifacts"), log)
        wait_mlflow(self.url, self.proc, log, timeout_s=self.start_timeout_s)

    def ensure_up(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill(self) -> float:
        """SIGKILL the server's whole session; the moment it died."""
        kill(self.proc)
        wait_port_free(self.port)
        return time.monotonic()

    def rows(self, sql: str) -> list[tuple]:
        """Read the store's file directly: works while the server is down."""
        try:
            with sqlite3.connect(self.db) as con:
                return con.execute(sql).fetchall()
        except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
            return []

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.url, registry_uri=self.url)


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[Postgres]:
    with postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def s3_service() -> Iterator[S3]:
    with s3() as store:
        yield store


@dataclass
class Stack:
    """The production stack: tracking server (PostgreSQL + S3 artifacts, auth on) and S3."""

    tracking: MlflowServer
    s3: S3
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {**self.s3.env, **self.tracking.env}


@pytest.fixture(scope="session")
def production_stack(postgres_service, s3_service) -> Iterator[Stack]:
    """MLflow with basic auth on PostgreSQL, artifacts proxied to S3, and an S3 bucket for DVC."""
    bucket = s3_service.create_bucket("runyard")
    backend = postgres_service.create_database("mlflow")
    auth_db = postgres_service.create_database("mlflow_auth")
    with mlflow_server(backend, f"{bucket}/mlflow", auth=True, env=s3_service.env, auth_db_uri=auth_db) as server:
        yield Stack(server, s3_service, bucket)
