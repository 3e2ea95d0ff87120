"""A real PostgreSQL server for the shared alerts store, once per pytest session.

Debian's `postgresql` package (make setup installs it as root) puts `initdb` and `postgres`
under /usr/lib/postgresql/VERSION/bin. `initdb` refuses to run as root, so both run as the
package's `postgres` user through `runuser`, in a temp dir, on a free loopback port, with
fsync off (test data). Ready in about 1-2 s. Each test gets a database of its own
(`alerts_dsn`), so replicas of one test share it and tests do not see each other's rows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.apiserver import _free_port, _with_death_signal

USER = "postgres"


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def missing_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (PostgreSQL runs as its own user through runuser)"
    if not _bin("initdb") or not _bin("postgres") or not shutil.which("runuser"):
        return "PostgreSQL is not installed (make setup: apt-get install postgresql)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER} user (Debian's postgresql package creates it)"
    return None


class Postgres:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.data = tmp / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_user(self, *argv: str) -> list[str]:
        return ["runuser", "-u", USER, "--", *argv]

    def start(self, timeout: float = 30.0) -> None:
        user = pwd.getpwnam(USER)
        os.chown(self.tmp, user.pw_uid, user.pw_gid)
        subprocess.run(
            self._as_user(
                str(_bin("initdb")),
                "-D",
                str(self.data),
                "--auth=trust",
                "-U",
                "meshward",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        log = (self.tmp / "postgres.log").open("wb")
        self.proc = subprocess.Popen(
            _with_death_signal(
                self._as_user(
                    str(_bin("postgres")),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.tmp),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                )
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "PostgreSQL did not start:\n"
                        + (self.tmp / "postgres.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.1)

    def dsn(self, database: str) -> str:
        return f"postgresql://meshward@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # smart shutdown is quick with nothing to flush
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="meshward-pg-"))
    pg = Postgres(tmp)
    try:
        t0 = time.monotonic()
        pg.start()
        pg.start_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def alerts_dsn(postgres: Postgres) -> str:
    """A DSN of a fresh database on the session's PostgreSQL server."""
    return postgres.new_database()
