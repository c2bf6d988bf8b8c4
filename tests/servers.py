"""Real PostgreSQL and Redis servers for the dependency-check tests: no mocks.

Each runs from a fresh temporary directory, listens on a free loopback port only, requires a random
password, and can be stopped and started again on the same port and data (outage tests). The fixtures in
conftest.py start one of each per session and stop them at its end.

Installed with apt-get (as root, once, only when missing; see tests/debian.py):

- ``postgresql``: Debian's server, whose ``initdb``, ``pg_ctl``, ``pg_isready`` and ``createdb`` live in
  ``/usr/lib/postgresql/<major>/bin`` (the newest major is used). They refuse to run as root, so as root
  they run as the unprivileged ``postgres`` user that the package creates, on a directory it owns.
- ``redis-server``: Debian's Redis (built with TLS).
- ``openssl``: the command that makes the TLS tests' CA and server certificate (:func:`make_certificates`).

With ``certificates``, a server speaks TLS with that certificate: PostgreSQL with ``ssl = on`` (plain
connections still accepted, as ``sslmode`` decides), Redis on a TLS port only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .conftest import free_port, wait_until
from .debian import ensure_command, ensure_files

# Bounds the commands that start and stop a server (pg_ctl waits for the server itself): generous, since
# the machine may be busy; reaching it is a failure, never a wait.
COMMAND_TIMEOUT_S = 60.0
USER = "phoenix_test"


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA made for the test session, and a server certificate and key it signed, for
    ``localhost`` and ``127.0.0.1``."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client's TLS context trusting the CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_certificates(directory: Path) -> Certificates:
    """A CA and a server certificate in ``directory``, made by the ``openssl`` command (P-256 keys, valid
    for two days: long enough for any session, short enough to be worthless if left behind)."""
    openssl = ensure_command("openssl", "openssl")

    def run(*args: str | Path) -> None:
        subprocess.run(
            [openssl, *map(str, args)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=COMMAND_TIMEOUT_S,
        )

    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    days = ["-days", "2"]
    ca_key, ca_file = directory / "ca.key", directory / "ca.pem"
    # `req -x509` marks the certificate as a CA (basicConstraints CA:TRUE).
    run("req", "-x509", *new_key, *days, "-keyout", ca_key, "-out", ca_file, "-subj", "/CN=Phoenix test CA")
    key_file, cert_file = directory / "server.key", directory / "server.pem"
    request = directory / "server.csr"
    run("req", "-new", *new_key, "-keyout", key_file, "-out", request, "-subj", "/CN=localhost")
    extensions = directory / "server.ext"
    # A server's certificate, as a verifier wants it: not a CA, for TLS servers, naming its hosts.
    extensions.write_text(
        "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
    )
    signed: list[str | Path] = ["-CA", ca_file, "-CAkey", ca_key, "-set_serial", f"0x{secrets.token_hex(8)}"]
    run("x509", "-req", "-in", request, *signed, *days, "-extfile", extensions, "-out", cert_file)
    return Certificates(ca_file, cert_file, key_file)


def _postgres_bin() -> Path:
    """Debian's newest PostgreSQL binaries (not /usr/local/bin, which may hold anything)."""
    initdbs = ensure_files("/usr/lib/postgresql/*/bin/initdb", "postgresql")
    newest = max(initdbs, key=lambda initdb: int(initdb.parent.parent.name))
    return newest.parent


class Postgres:
    """A PostgreSQL server owned by the test session: role ``phoenix_test`` (scram-sha-256 password)
    owning database ``phoenix_test``, on ``127.0.0.1:port``, its unix sockets in its own directory; with
    ``certificates``, TLS on too."""

    def __init__(self, certificates: Certificates | None = None) -> None:
        self.certificates = certificates
        self.bin = _postgres_bin()
        self.port = free_port()
        self.password = secrets.token_hex(16)
        # initdb and pg_ctl refuse to run as root: as root they run as Debian's `postgres` user, which
        # must own the directory and be able to reach it (/tmp, not pytest's root-only directories).
        self._as_owner: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="phoenix-postgres-", dir="/tmp"))
        try:
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                os.chown(self.root, owner.pw_uid, owner.pw_gid)
                self._as_owner = ["runuser", "-u", "postgres", "--"]
            self.data = self.root / "data"
            self.log = self.root / "server.log"
            self._initdb()
            self.start()
            self._run(
                [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, USER],
                env={**os.environ, "PGPASSWORD": self.password},
            )
        except BaseException:
            self.close()
            raise

    def _run(self, argv: list[str], *, as_owner: bool = False, env: dict[str, str] | None = None) -> None:
        command = [*self._as_owner, *argv] if as_owner else argv
        done = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=COMMAND_TIMEOUT_S
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{command} exited with {done.returncode}:\n{output}\n{log}")

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password)
        if self._as_owner:
            shutil.chown(pwfile, "postgres")
        pwfile.chmod(0o600)
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
            as_owner=True,
        )
        pwfile.unlink()
        # In the configuration rather than on pg_ctl's command line, so that every start() is the same.
        # fsync off: the data is thrown away, and syncing is most of a small server's start-up.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
            )
            if self.certificates is not None:
                cert_file, key_file = self._owned_copy(
                    self.certificates.cert_file, self.certificates.key_file
                )
                conf.write(f"ssl = on\nssl_cert_file = '{cert_file}'\nssl_key_file = '{key_file}'\n")

    def _owned_copy(self, *files: Path) -> list[Path]:
        """Copies of ``files`` in the server's directory, that only the server's user may read (it
        refuses a key that others can)."""
        copies = []
        for file in files:
            copy = self.root / file.name
            shutil.copyfile(file, copy)
            if self._as_owner:
                shutil.chown(copy, "postgres")
            copy.chmod(0o600)
            copies.append(copy)
        return copies

    def start(self) -> None:
        """Starts the server (again) on the same port and data, and returns once it accepts connections."""
        self._run(
            [str(self.bin / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w"],
            as_owner=True,
        )
        wait_until(self.accepting, what=f"PostgreSQL to accept connections on port {self.port}")

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected at once, as when a database goes down."""
        self._run([str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"], as_owner=True)

    @property
    def running(self) -> bool:
        status = subprocess.run(
            [*self._as_owner, str(self.bin / "pg_ctl"), "status", "-D", str(self.data)],
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        return status.returncode == 0

    def accepting(self) -> bool:
        ready = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            timeout=COMMAND_TIMEOUT_S,
        )
        return ready.returncode == 0

    def dsn(self, password: str | None = None, *, sslmode: str | None = None) -> str:
        """The URL of the test database, with the right password or ``password``, and ``sslmode``."""
        secret = self.password if password is None else password
        options = "" if sslmode is None else f"?sslmode={sslmode}"
        return f"postgresql://{USER}:{secret}@127.0.0.1:{self.port}/{USER}{options}"

    def close(self) -> None:
        """Stops the server if it runs, and removes its directory."""
        if (self.root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):  # best effort: the directory goes regardless
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Redis:
    """A Redis server owned by the test session, on ``127.0.0.1:port``, requiring ``password``, keeping
    nothing on disk; with ``certificates``, that port speaks TLS only."""

    def __init__(self, certificates: Certificates | None = None) -> None:
        self.certificates = certificates
        self.command = ensure_command("redis-server", "redis-server")
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.root = Path(tempfile.mkdtemp(prefix="phoenix-redis-"))
        self.log = self.root / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Starts the server (again) on the same port, and returns once it answers PING."""
        if self.certificates is None:
            ports = ["--port", str(self.port)]
        else:
            tls = self.certificates
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            ports += ["--tls-cert-file", str(tls.cert_file), "--tls-key-file", str(tls.key_file)]
        argv = [
            self.command,
            *ports,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.root),
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            self.password,
            "--daemonize",
            "no",
        ]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def answers() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n{self.logs()}")
            return self.ping()

        wait_until(answers, what=f"Redis to answer PING on port {self.port}")

    def stop(self) -> None:
        """SIGTERM, as a shutdown does: the port refuses connections once this returns."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ping(self) -> bool:
        """Whether the server answers AUTH and PING (RESP spoken by hand: no client library needed)."""
        try:
            with contextlib.ExitStack() as stack:
                conn = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), timeout=5.0))
                if self.certificates is not None:
                    context = self.certificates.client_context()
                    conn = stack.enter_context(context.wrap_socket(conn, server_hostname="127.0.0.1"))
                conn.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                answer = b""
                while answer.count(b"\r\n") < 2:
                    chunk = conn.recv(1024)
                    if not chunk:
                        return False
                    answer += chunk
                return answer == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False

    def url(self, password: str | None = None) -> str:
        """The server's URL, with the right password or ``password``."""
        secret = self.password if password is None else password
        scheme = "redis" if self.certificates is None else "rediss"
        return f"{scheme}://:{secret}@127.0.0.1:{self.port}/0"

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        """Stops the server if it runs, and removes its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
