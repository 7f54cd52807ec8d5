"""Child processes of the bench: started in their own process groups, always reaped.

Every process the bench starts goes through :class:`Procs`; leaving its ``with`` block (normally,
by an exception, by Ctrl-C, or by SIGTERM, which ``run.py`` turns into ``SystemExit``) kills each
child's whole process group. An ``atexit`` hook reaps whatever is still registered as a last
resort, and on Linux each child started here also gets SIGKILL if the bench itself dies (even by
``kill -9``). Everything listens on 127.0.0.1 only, on ports chosen at run time.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

_LIVE: set[subprocess.Popen[bytes]] = set()


class BenchError(RuntimeError):
    """A run did not complete (a process died, a timeout, no progress)."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for children: the repository on the path, no stray DERECHO_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERECHO_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.update(extra or {})
    return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback right now (bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for_nodes(pred: Any, timeout: float, procs: dict[int, subprocess.Popen[bytes]], workdir: Path) -> None:
    """Until ``pred()`` holds (an exception counts as not yet); a node process that exits
    meanwhile ends the wait with its log's tail (``workdir/node-<id>.log``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        for i, p in procs.items():
            if p.poll() is not None:
                tail = (workdir / f"node-{i}.log").read_text()[-2000:]
                raise RuntimeError(f"node {i} exited with {p.returncode}:\n{tail}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout} s (logs in {workdir})")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the bench dies (even by SIGKILL), Linux only."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    _LIVE.discard(proc)


@atexit.register
def _reap_all() -> None:
    for proc in list(_LIVE):
        _kill_group(proc)


class Procs:
    """A set of child processes, each in its own session; ``close`` kills them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str] | None = None,
        stdout: Any = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdout=stdout if stdout is not None else log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env if env is not None else child_env(),
                cwd=str(ROOT),
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            log.close()
        _LIVE.add(proc)
        self.procs[name] = proc
        return proc

    def adopt(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Take charge of a process started elsewhere (in its own session): killed on close."""
        _LIVE.add(proc)
        self.procs[name] = proc

    def python(self, name: str, module: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        return self.spawn(name, [sys.executable, "-m", module, *args], **kw)

    def log_tail(self, name: str, chars: int = 1500) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def check_alive(self, what: str) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode} while {what}:\n{self.log_tail(name)}")

    def wait_until(self, ok: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
        """Poll ``ok`` (exceptions count as not yet) until true; fail if a child dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ok():
                    return
            except Exception:
                pass
            self.check_alive(f"waiting for {what}")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what} (logs in {self.workdir})")
            time.sleep(interval)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in self.procs.values():
            _kill_group(proc)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
