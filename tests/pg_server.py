"""A throwaway PostgreSQL server for the test session.

``PostgresServer`` runs ``initdb`` in a fresh temporary directory, starts ``postgres`` on a free
loopback TCP port and hands out fresh databases as SQLAlchemy async URLs. On exit it stops the
server and deletes the directory. PostgreSQL refuses to run as root, so when the tests run as
root the server runs as the ``postgres`` system user (or ``nobody``) through ``runuser``.

The server binaries are looked up under ``/usr/lib/postgresql/<version>/bin`` (newest version
first) and then on ``PATH``. When they are missing this raises: the tests must fail loudly, and
``scripts/test`` installs PostgreSQL.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresServer", "find_postgres_bin_dir"]

SUPERUSER = "torpor"
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
_REQUIRED = ("initdb", "postgres", "pg_ctl", "pg_isready", "createdb", "dropdb")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def find_postgres_bin_dir() -> Path:
    """The directory holding initdb/postgres/pg_ctl: newest Debian install, else PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if all(os.access(os.path.join(candidate, tool), os.X_OK) for tool in _REQUIRED):
            return Path(candidate)
    found = [shutil.which(tool) for tool in _REQUIRED]
    if all(found):
        directories = {os.path.dirname(os.path.realpath(str(path))) for path in found}
        if len(directories) == 1:
            return Path(directories.pop())
        initdb = found[0]
        assert initdb is not None
        return Path(os.path.dirname(initdb))
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl) were not found under "
        "/usr/lib/postgresql/*/bin or on PATH. Run scripts/test, which installs PostgreSQL "
        "(Debian package 'postgresql') before running the tests."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as_user() -> str | None:
    """The system user to run the server as, or None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


class PostgresServer:
    """A PostgreSQL server in a temporary directory; use it as a context manager."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir if bin_dir is not None else find_postgres_bin_dir()
        self.user = _run_as_user()
        self.port = 0
        self.host = HOST
        self._tmp: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------------

    @property
    def tmp_dir(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return self._tmp

    @property
    def data_dir(self) -> Path:
        return self.tmp_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.tmp_dir / "postgres.log"

    def _tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["runuser", "-u", self.user, "--", *argv]

    @staticmethod
    def _env() -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        return env

    def _check(self, argv: list[str], what: str) -> None:
        result = subprocess.run(
            argv,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")
            raise RuntimeError(f"{what} failed (exit {result.returncode}): {output}")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self._process is not None:
            return self
        self._tmp = Path(tempfile.mkdtemp(prefix="torpor-pg-"))
        atexit.register(self.stop)
        try:
            if self.user is not None:
                entry = pwd.getpwnam(self.user)
                os.chown(self._tmp, entry.pw_uid, entry.pw_gid)
            self._check(
                self._as_server_user(
                    [
                        self._tool("initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        SUPERUSER,
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ]
                ),
                "initdb",
            )
            last_error: Exception | None = None
            for _attempt in range(3):  # the free port may be taken between probing and binding
                try:
                    self._start_postgres(_free_port())
                    return self
                except _PortInUse as exc:
                    last_error = exc
            raise RuntimeError(f"PostgreSQL could not start: {last_error}")
        except BaseException:
            self.stop()
            raise

    def _start_postgres(self, port: int) -> None:
        self.port = port
        argv = self._as_server_user(
            [
                self._tool("postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                HOST,
                "-p",
                str(port),
                "-c",
                f"unix_socket_directories={self.tmp_dir}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ]
        )
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                self._process = None
                log_text = self._log_tail()
                if "Address already in use" in log_text:
                    raise _PortInUse(f"port {port} is in use")
                raise RuntimeError(f"PostgreSQL exited while starting; its log:\n{log_text}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not accept connections within {START_TIMEOUT_S:.0f} s; "
                    f"its log:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _ready(self) -> bool:
        result = subprocess.run(
            [
                self._tool("pg_isready"),
                "-q",
                "-h",
                HOST,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-t",
                "1",
            ],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (immediate shutdown) and delete its directory. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(Exception):
                    subprocess.run(
                        self._as_server_user(
                            [
                                self._tool("pg_ctl"),
                                "stop",
                                "-D",
                                str(self.data_dir),
                                "-m",
                                "immediate",
                                "-w",
                                "-t",
                                "15",
                            ]
                        ),
                        env=self._env(),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        timeout=30,
                        check=False,
                    )
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Kill the whole session: runuser and the postmaster with its children.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------------------------

    def _client_args(self) -> list[str]:
        return ["-h", HOST, "-p", str(self.port), "-U", SUPERUSER]

    def url(self, name: str) -> str:
        """The SQLAlchemy async URL of database ``name`` on this server."""
        return f"postgresql+asyncpg://{SUPERUSER}@{HOST}:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy async (asyncpg) URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"unsafe database name: {name!r}")
        if self._process is None:
            raise RuntimeError("the PostgreSQL server is not started")
        self._check([self._tool("createdb"), *self._client_args(), name], f"createdb {name}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, closing any connections still open to it."""
        if not _DB_NAME.match(name):
            raise ValueError(f"unsafe database name: {name!r}")
        if self._process is None:
            raise RuntimeError("the PostgreSQL server is not started")
        self._check(
            [self._tool("dropdb"), *self._client_args(), "--if-exists", "--force", name],
            f"dropdb {name}",
        )


class _PortInUse(RuntimeError):
    pass
