"""`gochat --workers N`: a supervisor process and N gochat nodes serving one port.

Each worker is today's single-process gochat, started as `python -m gochat` with its own node
id (`<node id>-w<i>`) and `reuse_port` on: every worker binds the port with SO_REUSEPORT and
the kernel spreads new connections over the workers that are listening. A dead or
restarting worker's socket leaves that group, so its share goes to the others at once; a
socket made by the parent and inherited would keep taking connections for a worker that is
not there to accept them. Redis makes the workers one chat, as it does separate machines.

The parent is not on the message path: it imports no part of the server, starts the
workers, restarts one that dies (after 0.5 s, doubling to 30 s while it keeps dying, back to
0.5 s once it has stayed up 30 s), and on SIGTERM or SIGINT forwards SIGTERM and waits for
them, SIGKILLing one still there GOCHAT_SHUTDOWN_GRACE + 1 s later. It sleeps in a selector
on the signal wakeup fd between events: no polling.

A worker watches a pipe from the parent (`SUPERVISOR_FD`): when the parent is gone, however
it died, the pipe reads end-of-file and the worker shuts down as on SIGTERM, so no orphan
keeps serving the port.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("gochat.workers")

# Set by the parent in each worker's environment: the fd of the read end of its lifeline.
SUPERVISOR_FD = "GOCHAT_SUPERVISOR_FD"
RESTART_FIRST = 0.5  # seconds before a dead worker is started again...
RESTART_MAX = 30.0  # ...doubling while it keeps dying, up to this
STABLE_AFTER = 30.0  # a worker up this long starts again from RESTART_FIRST when it dies
STOP_MARGIN = 1.0  # past the grace, for a worker's interpreter to exit
REFUSED = 2  # a worker's exit status when it refuses its configuration (or the port)
CLEAN_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # killed before it could handle them


def worker_node_id(node_id: str, index: int) -> str:
    """The node id of worker `index`: the same across its restarts, so a restarted worker
    first removes what its previous run left in Redis."""
    return f"{node_id}-w{index}"


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on `host:port` already (another gochat included).

    Checked once by the parent: workers bind with SO_REUSEPORT, which would otherwise let
    them join another program's group on that port without a word (same user only).
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return False  # the workers report it, with the address they could not resolve
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def describe_exit(code: int) -> str:
    """`status 1` or `killed by SIGKILL`, from a Popen returncode."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"status {code}"


@dataclass
class Worker:
    """One worker slot: its current process, if any, and when to start the next one."""

    index: int
    node_id: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_FIRST
    start_at: float | None = 0.0  # monotonic time of the next start; None: none planned


class Supervisor:
    """Starts `count` workers, keeps them running, and stops them on SIGTERM or SIGINT."""

    def __init__(self, count: int, node_id: str, env: Mapping[str, str], grace: float) -> None:
        self.workers = [Worker(i, worker_node_id(node_id, i)) for i in range(count)]
        self.env = dict(env)
        self.grace = grace
        self.stopping = False
        self.status = 0  # the parent's exit status once every worker is gone
        self.kill_at = 0.0

    def run(self) -> int:
        """Supervise until stopped and every worker has exited; return the exit status:
        0 when every worker stopped cleanly, 2 when one refused its configuration, else 1."""
        wake_r, wake_w = os.pipe()
        lifeline_r, lifeline_w = os.pipe()  # the parent holds the write end until it exits
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        watched = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)
        # A Python-level handler is what makes the C handler write to the wakeup fd.
        old = {sig: signal.signal(sig, lambda _sig, _frame: None) for sig in watched}
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                if not self.stopping:
                    for worker in self.workers:
                        if worker.start_at is not None and worker.start_at <= now:
                            self._start(worker, lifeline_r)
                elif not any(w.proc for w in self.workers):
                    return self.status
                elif now >= self.kill_at:
                    self._kill_the_rest()
                    continue
                selector.select(self._timeout(now))
                try:
                    received = set(os.read(wake_r, 512))
                except BlockingIOError:
                    received = set()
                if received & {signal.SIGTERM, signal.SIGINT}:
                    name = "SIGTERM" if signal.SIGTERM in received else "SIGINT"
                    self._stop(f"{name} received", 0)
                self._reap()
        finally:
            selector.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            for fd in (wake_r, wake_w, lifeline_r, lifeline_w):
                os.close(fd)

    def _timeout(self, now: float) -> float | None:
        if self.stopping:
            return max(0.0, self.kill_at - now)
        due = [w.start_at for w in self.workers if w.start_at is not None]
        return max(0.0, min(due) - now) if due else None

    def _start(self, worker: Worker, lifeline: int) -> None:
        env = {**self.env, "GOCHAT_WORKERS": "1", "GOCHAT_NODE_ID": worker.node_id}
        env[SUPERVISOR_FD] = str(lifeline)
        # --node-id on the command line too: `ps` shows which worker is which.
        argv = [sys.executable, "-m", "gochat", "--node-id", worker.node_id]
        worker.start_at = None
        try:
            worker.proc = subprocess.Popen(argv, env=env, pass_fds=(lifeline,))
        except OSError as exc:  # out of processes or memory: try again later
            worker.start_at = time.monotonic() + worker.delay
            log.error(
                "worker %d could not start: %s; trying again in %gs",
                worker.index,
                exc,
                worker.delay,
            )
            worker.delay = min(worker.delay * 2, RESTART_MAX)
            return
        worker.started = time.monotonic()
        log.info(
            "worker %d started: pid %d, node %s", worker.index, worker.proc.pid, worker.node_id
        )

    def _reap(self) -> None:
        for worker in self.workers:
            if worker.proc is None or (code := worker.proc.poll()) is None:
                continue
            pid = worker.proc.pid
            worker.proc = None
            how = describe_exit(code)
            if self.stopping:
                log.info(
                    "worker %d exited: pid %d, node %s, %s", worker.index, pid, worker.node_id, how
                )
                if code != 0 and -code not in CLEAN_SIGNALS and self.status == 0:
                    self.status = 1
                continue
            if code == REFUSED:
                log.error(
                    "worker %d exited: pid %d, node %s, %s (it refused its configuration or "
                    "the port): stopping",
                    worker.index,
                    pid,
                    worker.node_id,
                    how,
                )
                self._stop("a worker refused to start", REFUSED)
                continue
            now = time.monotonic()
            if now - worker.started >= STABLE_AFTER:
                worker.delay = RESTART_FIRST
            worker.start_at = now + worker.delay
            log.warning(
                "worker %d exited: pid %d, node %s, %s; starting it again in %gs",
                worker.index,
                pid,
                worker.node_id,
                how,
                worker.delay,
            )
            worker.delay = min(worker.delay * 2, RESTART_MAX)

    def _stop(self, reason: str, status: int) -> None:
        """Forward SIGTERM to every worker, once; later requests change nothing."""
        if self.stopping:
            log.info("%s: already stopping", reason)
            return
        self.stopping = True
        self.status = status
        self.kill_at = time.monotonic() + self.grace + STOP_MARGIN
        running = [w for w in self.workers if w.proc is not None]
        log.info(
            "%s: stopping %d worker(s) within %gs (GOCHAT_SHUTDOWN_GRACE + %gs)",
            reason,
            len(running),
            self.grace + STOP_MARGIN,
            STOP_MARGIN,
        )
        for worker in self.workers:
            worker.start_at = None
            if worker.proc is not None:
                worker.proc.send_signal(signal.SIGTERM)

    def _kill_the_rest(self) -> None:
        for worker in self.workers:
            if worker.proc is None:
                continue
            log.error(
                "worker %d (pid %d, node %s) still running %gs after SIGTERM: SIGKILL",
                worker.index,
                worker.proc.pid,
                worker.node_id,
                self.grace + STOP_MARGIN,
            )
            worker.proc.kill()
            try:
                code = worker.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # stuck in the kernel: nothing more to do
                log.error("worker %d (pid %d) did not die", worker.index, worker.proc.pid)
            else:
                log.info(
                    "worker %d exited: pid %d, node %s, %s",
                    worker.index,
                    worker.proc.pid,
                    worker.node_id,
                    describe_exit(code),
                )
            worker.proc = None
        self.status = self.status or 1
