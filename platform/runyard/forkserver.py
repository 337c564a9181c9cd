"""The warm command server: `runyard` commands start with torch, Lightning, MLflow and Ray already imported.

A fresh `runyard` process spends 5-10 s importing before it does anything, and a
`dvc repro` runs twenty-odd of them back to back. So the `runyard` command is a thin
client for the commands a pipeline runs (``WARM_VERBS``): it connects to the project's
command server over a Unix socket, hands over its stdin, stdout and stderr (the file
descriptors themselves), its arguments, working directory, environment and
``sys.path``, and waits for the exit code.

The server has imported everything once and forks a child per command. The child is a
new process in all that matters: its own pid, working directory, environment and
modules (the server never imports project code), so nothing leaks from one command to
the next; only the imports are shared. This is the preloading fork server of
``multiprocessing``'s "forkserver" start method, for a whole command line.

- Started by the first command that finds none (it waits for the server's imports,
  which it would have paid itself); stopped after ``IDLE_S`` seconds with no command,
  by `runyard local down`, and replaced when runyard's code or the environment that
  imports read changes (the key of its socket; the old one idles out).
- In a `dvc repro`, that first command also starts the project's local Ray and warm
  trainer in the background (``execution.warm.warm_up``) beside the server's imports,
  so the pipeline's first training finds them up.
- Ctrl-C and SIGTERM of the client are passed on to the command; if the client dies,
  the command gets SIGTERM, so its MLflow runs end KILLED as a killed process's do.
- ``RUNYARD_WARM_CLI=0`` turns it off: every command runs in its own process. If the
  server cannot be reached or started, the command runs in its own process too.
- Only the user who started it can connect (a 0700 directory, and the peer's uid checked).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

CLI = "runyard.cli"
WARM_UP = "runyard.execution.warm"
"""The background warm-up's module (``_start_warm_up``), run by name: it sits above this one."""
WARM_VERBS = {"prepare", "train", "evaluate", "register", "tune", "compare", "summary", "list"}
IDLE_S = float(os.environ.get("RUNYARD_WARM_CLI_IDLE_S", "600"))
START_S = 180.0
"""How long a client waits for a new server's imports before running the command itself."""
# Read by libraries when they are imported: a server started under other values is another server.
IMPORT_ENV = ("PYTHON", "RAY_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH", "CUDA", "NCCL", "MLFLOW_",
              "LD_", "GRPC_", "MPLBACKEND", "VIRTUAL_ENV", "HOME")
PRELOAD = (
    "torch", "lightning.pytorch", "mlflow", "mlflow.pytorch", "mlflow.store.tracking.sqlalchemy_store",
    "ray", "ray.train", "ray.train.torch", "ray.tune", "sklearn.metrics", "matplotlib.pyplot",
    "runyard.cli", "runyard.commands.prepare", "runyard.commands.train", "runyard.commands.evaluate",
    "runyard.commands.register", "runyard.commands.tune", "runyard.commands.report",
    "runyard.execution.trainer", "runyard.execution.warm", "runyard.execution.lightning",
    "runyard.tuning.search", "runyard.tracking.runs", "runyard.tracking.models",
)


# ----------------------------------------------------------------------------- the client


def main() -> None:
    """The `runyard` command: through the project's warm server where it serves, else in this process."""
    code = None
    if _wanted(sys.argv):
        root = _project_root(Path.cwd())
        if root is not None:
            code = run_warm(root, sys.argv)
    if code is not None:
        sys.exit(code)
    _cli_main()()


def _cli_main():
    """runyard.cli's main, found by name: the CLI sits above this module (it stops servers)."""
    import importlib

    return importlib.import_module(CLI).main


def _wanted(argv: list[str]) -> bool:
    verb = next((a for a in argv[1:] if not a.startswith("-")), None)
    return (os.environ.get("RUNYARD_WARM_CLI", "1") != "0" and verb in WARM_VERBS
            and sys.platform.startswith("linux") and "--help" not in argv)


def _project_root(here: Path) -> Path | None:
    """As ``Project.find``: the nearest folder with params.yaml and pipelines/."""
    here = here.resolve()
    return next((d for d in (here, *here.parents) if (d / "params.yaml").is_file() and (d / "pipelines").is_dir()),
                None)


def socket_dir() -> Path:
    d = Path(os.environ.get("RUNYARD_WARM_CLI_DIR") or f"/tmp/runyard-cli-{os.getuid()}")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if d.stat().st_uid != os.getuid() or d.stat().st_mode & 0o077:
        raise PermissionError(f"{d}: not a private folder of this user")
    return d


def code_fingerprint() -> str:
    """runyard's own code as this process sees it (and the interpreter that runs it): a
    long-lived process started under other code is replaced (this server, the warm trainer)."""
    import runyard

    package = Path(runyard.__file__).parent
    digest = hashlib.sha256(sys.executable.encode())
    for p in sorted(package.rglob("*.py")):
        st = p.stat()
        digest.update(f"{p.relative_to(package)}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    return digest.hexdigest()


def server_key(root: Path) -> str:
    """The project, runyard's code as this process sees it, and the import-time environment."""
    digest = hashlib.sha256(f"{root}\0{code_fingerprint()}\0".encode())
    for key in sorted(os.environ):
        if key.startswith(IMPORT_ENV):
            digest.update(f"{key}={os.environ[key]}\0".encode())
    return digest.hexdigest()[:24]


def run_warm(root: Path, argv: list[str]) -> int | None:
    """Run ``argv`` on the project's server (starting it if need be); its exit code, or
    None if no server could serve it (the caller runs it itself)."""
    try:
        path = socket_dir() / f"{server_key(root)}.sock"
        conn = _connect(path)
        if conn is None:
            stop(root)  # the project's servers of older code or another environment
            _start_server(root, path)
            if os.environ.get("DVC_STAGE"):  # a pipeline's first command: trainings follow
                _start_warm_up(root)
            conn = _connect(path, wait_s=START_S)
        if conn is None:
            return None
        _send_request(conn, argv)
    except OSError:
        return None
    return _wait(conn)


def _connect(path: Path, wait_s: float = 0.0) -> socket.socket | None:
    deadline = time.monotonic() + wait_s
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except OSError:
            s.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _start_server(root: Path, path: Path) -> None:
    import subprocess

    log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 (the server's, kept open by it)
    subprocess.Popen(
        [sys.executable, "-c", f"from runyard.forkserver import serve; serve({str(path)!r}, {str(root)!r})"],
        cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()


def _start_warm_up(root: Path) -> None:
    """The project's local Ray and warm trainer started beside the server's imports
    (``execution.warm.warm_up``, by module name: it sits above this module), so that
    the pipeline's first training finds them up. Its log: .runyard/warm-up.log."""
    import subprocess

    (root / ".runyard").mkdir(exist_ok=True)
    log = open(root / ".runyard" / "warm-up.log", "ab")  # noqa: SIM115 (the warm-up's, kept open by it)
    proc = subprocess.Popen([sys.executable, "-m", WARM_UP, str(root)], cwd=root,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    (root / ".runyard" / "warm-up.pid").write_text(str(proc.pid))


def stop_warm_up(root: Path) -> None:
    """Kill the project's warm-up if it still runs: `runyard local down` calls this before
    stopping the local Ray, so that no warm-up starts a head after it."""
    import psutil

    pid_file = Path(root) / ".runyard" / "warm-up.pid"
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        proc = psutil.Process(int(pid_file.read_text()))
        if WARM_UP in proc.cmdline():
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the warm-up alone
            proc.wait(timeout=10)
    pid_file.unlink(missing_ok=True)


def _send_request(conn: socket.socket, argv: list[str]) -> None:
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:  # closed (a daemon's stdin): the command gets /dev/null
            fds.append(os.open(os.devnull, os.O_RDWR))
    header = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path}).encode()
    socket.send_fds(conn, [len(header).to_bytes(8, "big") + header], fds)


def _wait(conn: socket.socket) -> int:
    """Relay signals to the command until it ends; its exit code."""
    def relay(signum, _frame):
        with contextlib.suppress(OSError):
            conn.sendall(bytes([signum]))

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, relay)
    data = b""
    while len(data) < 4:
        chunk = conn.recv(4 - len(data))
        if not chunk:
            print("runyard: error: the command server stopped during the command (runyard local down, "
                  "or killed); run it again", file=sys.stderr)
            return 1
        data += chunk
    return int.from_bytes(data, "big", signed=True)


# ----------------------------------------------------------------------------- the server


def serve(path: str, root: str) -> None:
    """Preload, then fork a child per connection until idle for ``IDLE_S``."""
    import importlib

    # As cli.main does, before anything loads OpenMP or Ray.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    sock_path = Path(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = sock_path.with_suffix(f".{os.getpid()}.tmp")
    listener.bind(str(tmp))
    listener.listen(16)
    os.replace(tmp, sock_path)  # atomic: two servers racing leave one socket, the other idles out
    mine = os.stat(sock_path).st_ino
    sock_path.with_suffix(".json").write_text(json.dumps({"pid": os.getpid(), "root": root}))
    listener.settimeout(1.0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: set[int] = set()
    last = time.monotonic()
    try:
        while _same_socket(mine, sock_path):
            ended = _reap(children)
            if ended or children:
                last = time.monotonic()
            if not children and time.monotonic() - last > IDLE_S:
                break
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            last = time.monotonic()
            if not _same_user(conn):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                _child(conn)  # never returns
            conn.close()
            children.add(pid)
    finally:
        if _same_socket(mine, sock_path):
            sock_path.unlink(missing_ok=True)
            sock_path.with_suffix(".json").unlink(missing_ok=True)


def _same_socket(inode: int, path: Path) -> bool:
    """Whether ``path`` is still this server's socket (not removed, not another server's)."""
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _same_user(conn: socket.socket) -> bool:
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1] == os.getuid()


def _reap(children: set[int]) -> bool:
    """Drop the commands that have ended from ``children``; whether any had."""
    ended = False
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
        children.discard(pid)
        ended = True
    return ended


def _child(conn: socket.socket) -> None:
    """Become the command the client asked for, as a fresh process would run it; exit with its code."""
    code = 1
    try:
        conn.settimeout(None)
        request = _receive_request(conn)
        _become(request)
        import threading

        threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
        code = _run_cli()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # Done: the client closing after it has the code is no signal to this process.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        with contextlib.suppress(OSError):  # a client gone meanwhile has no use for it
            conn.sendall(code.to_bytes(4, "big", signed=True))
    except BaseException:
        import traceback

        traceback.print_exc()  # on the client's stderr, or before that the server's log
    finally:
        os._exit(code)


def _receive_request(conn: socket.socket) -> dict:
    msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    size = int.from_bytes(msg[:8], "big")
    body = msg[8:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the client went away")
        body += chunk
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    return json.loads(body)


def _become(request: dict) -> None:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = request["argv"]
    sys.path[:] = request["path"]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    # The streams were opened on the server's log: make them what a new process on these
    # descriptors would have (line-buffered on a terminal), and let rich look again.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=stream is sys.stderr or os.isatty(stream.fileno()))
    from runyard import progress

    progress.console.__init__(stderr=True)


def _watch_client(conn: socket.socket) -> None:
    """Signals the client relays; the client gone: SIGTERM, as a killed terminal would send."""
    while True:
        try:
            data = conn.recv(16)
        except OSError:
            data = b""
        if not data:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        for signum in data:
            os.kill(os.getpid(), signum)


def _run_cli() -> int:
    import atexit

    try:
        _cli_main()()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what a process's normal exit runs (Ray's shutdown, MLflow's end_run)
    return code


def stop(root: Path) -> int:
    """Stop the project's command servers (each running command finishes); how many were up."""
    stopped = 0
    with contextlib.suppress(OSError):
        for info in socket_dir().glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(info.read_text())
                if record.get("root") == str(Path(root).resolve()):
                    info.with_suffix(".sock").unlink(missing_ok=True)  # the server sees it gone and exits
                    os.kill(int(record["pid"]), signal.SIGTERM)
                    info.unlink(missing_ok=True)
                    stopped += 1
    return stopped
