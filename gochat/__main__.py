"""`gochat`: CLI flags over the environment -> Settings -> logging -> run the app (or, with
`--workers N`, supervise N processes that each run it: gochat/workers.py)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from .client.cli import add_commands, run
from .config import OPTIONS, Settings
from .workers import SUPERVISOR_FD, Supervisor, port_in_use, worker_node_id

log = logging.getLogger("gochat")

LOW_OPEN_FILES = 4096  # under it, a WARNING: a busy node holds more connections than that


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gochat",
        description="Real-time chat server. Every flag has an environment variable; "
        "a flag given on the command line wins.",
    )
    for opt in OPTIONS:
        default = Settings.model_fields[opt.field].get_default(call_default_factory=False)
        shown = "" if default in (None, (), "") else f" (default: {default})"
        if opt.field == "trust_proxy":
            parser.add_argument(
                opt.flag,
                dest=opt.field,
                action="store_const",
                const=True,
                default=None,
                help=f"{opt.help} [{opt.env}]",
            )
            continue
        parser.add_argument(
            opt.flag,
            dest=opt.field,
            default=None,
            metavar=opt.env,
            help=f"{opt.help}{shown} [{opt.env}]",
        )
    sub = parser.add_subparsers(dest="command", metavar="{serve,token,chat,send}")
    sub.add_parser("serve", help="serve (the default)")
    token = sub.add_parser("token", help="mint a client JWT for local use (needs the secret)")
    token.add_argument("user", help="userId (the token's sub)")
    token.add_argument("--name", help="display name (default: the userId)")
    token.add_argument("--ttl", type=float, default=3600, help="seconds until it expires")
    token.add_argument("--rooms", help="comma-separated rooms the holder may join")
    add_commands(sub)  # chat, send: clients of a server, they read no server settings
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("chat", "send"):
        raise SystemExit(run(args))
    overrides = {opt.field: getattr(args, opt.field) for opt in OPTIONS}
    try:
        settings = Settings.from_env(os.environ, **overrides)
    except ValidationError as exc:
        parser.exit(2, f"gochat: invalid configuration:\n{exc}\n")

    if args.command == "token":
        from .chat.auth import mint

        if not settings.auth_secret:
            parser.exit(2, "gochat token: set GOCHAT_AUTH_SECRET (or --auth-secret)\n")
        rooms = [r for r in args.rooms.split(",") if r] if args.rooms else None
        print(mint(settings.auth_secret, args.user, args.name, args.ttl, rooms))
        return

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    raise_open_files_limit()
    if settings.workers > 1:
        raise SystemExit(supervise(parser, settings, overrides))
    serve(parser, settings)


def serve(parser: argparse.ArgumentParser, settings: Settings) -> None:
    """Run one gochat node in this process until SIGTERM or SIGINT."""
    from .app import create_app

    app = create_app(settings)
    # Everything made so far (modules, classes, functions, the app) lives as long as the
    # process: move it out of the collector's sight, so that a full collection, which
    # Python runs as connections accumulate, walks only what came after (gc.freeze, as
    # CPython's docs suggest for long-running servers).
    gc.collect()
    gc.freeze()
    loop = new_event_loop(settings.event_loop)
    log.info("event loop: %s", type(loop).__module__.split(".")[0])
    lifeline = os.environ.get(SUPERVISOR_FD)  # set when this process is a --workers worker
    ours = stop_once_on_signals(loop, int(lifeline) if lifeline else None)

    def serving(_banner: str) -> None:  # run_app's "print", called once the port listens
        log.info(
            "gochat node %s serving on http://%s:%d (%s)",
            settings.node_id,
            settings.host,
            settings.port,
            "Redis" if settings.redis_url else "in memory",
        )

    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.shutdown_grace,
            backlog=settings.backlog,  # aiohttp's own is 128: a reconnect storm overflows it
            print=serving,
            access_log=None,
            handle_signals=not ours,
            reuse_port=bool(lifeline),  # the workers share the port (gochat/workers.py)
            loop=loop,
        )
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        parser.exit(2, port_taken(settings))


def port_taken(settings: Settings) -> str:
    return (
        f"gochat: port {settings.port} is already in use on {settings.host}: stop what "
        f"listens there, or pick another port with PORT=<port> or --port <port>\n"
    )


def stop_once_on_signals(loop: asyncio.AbstractEventLoop, lifeline: int | None) -> bool:
    """SIGTERM or SIGINT (or, for a worker, its supervisor's end) starts the graceful
    shutdown once; a later signal is a no-op. False where the loop cannot take signal
    handlers (Windows): run_app's own are used then.

    aiohttp's handlers raise GracefulExit on every signal, and one raised while the shutdown
    runs aborts it: run_app cancels what is left and the process exits 1 with its clients
    unclosed. A worker commonly gets two: a PaaS signals the whole process group, and the
    supervisor forwards the SIGTERM it got too.
    """
    stopping = False

    def stop(why: str) -> None:
        nonlocal stopping
        if stopping:
            log.info("%s: already shutting down", why)
            return
        stopping = True
        log.info("%s: shutting down", why)
        raise web.GracefulExit()

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig.name)
    except NotImplementedError:
        return False
    if lifeline is not None:
        os.set_blocking(lifeline, False)

        def supervisor_gone() -> None:
            try:
                if os.read(lifeline, 64):
                    return  # the supervisor never writes: not its end
            except BlockingIOError:
                return
            loop.remove_reader(lifeline)
            stop("the supervisor is gone")

        loop.add_reader(lifeline, supervisor_gone)
    return True


def supervise(parser: argparse.ArgumentParser, settings: Settings, flags: dict[str, Any]) -> int:
    """`--workers N`: check what the workers cannot share, then run the Supervisor."""
    n = settings.workers
    if not settings.redis_url:
        parser.exit(
            2,
            f"gochat: --workers {n} needs REDIS_URL: the workers are separate processes, and "
            "only Redis makes them one chat (the same rooms, presence and history); set "
            "REDIS_URL=redis://... or run one worker\n",
        )
    if settings.port == 0:
        parser.exit(2, f"gochat: --workers {n} needs a fixed PORT (0 gives each its own)\n")
    try:
        Settings.model_validate(
            {**settings.model_dump(), "node_id": worker_node_id(settings.node_id, n - 1)}
        )
    except ValidationError as exc:
        parser.exit(2, f"gochat: GOCHAT_NODE_ID is too long for its workers' ids:\n{exc}\n")
    if port_in_use(settings.host, settings.port):
        parser.exit(2, port_taken(settings))
    # The workers read the flags given here from their environment, where flags win too.
    env = dict(os.environ)
    for opt in OPTIONS:
        value = flags[opt.field]
        if value is not None:
            env[opt.env] = "1" if value is True else str(value)
    if settings.admin_token is None:
        # One console secret for every worker: a console session may reach any of them.
        env["GOCHAT_ADMIN_TOKEN"] = token = secrets.token_urlsafe(24)
        host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        log.warning(
            "GOCHAT_ADMIN_TOKEN is not set; this run's console: http://%s:%d/admin/login?token=%s",
            f"[{host}]" if ":" in host else host,
            settings.port,
            token,
        )
    log.info(
        "gochat supervisor (pid %d): %d workers, nodes %s to %s, on http://%s:%d through Redis",
        os.getpid(),
        n,
        worker_node_id(settings.node_id, 0),
        worker_node_id(settings.node_id, n - 1),
        settings.host,
        settings.port,
    )
    return Supervisor(n, settings.node_id, env, settings.shutdown_grace).run()


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit: every connection is
    an open file, and the common soft default of 1024 would turn clients away near 1000."""
    try:
        import resource
    except ImportError:  # Windows
        return
    unlimited = resource.RLIM_INFINITY

    def shown(n: int) -> str:
        return "unlimited" if n == unlimited else str(n)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            limit = hard
        except (ValueError, OSError) as exc:  # macOS refuses an unlimited soft limit
            log.warning("open files: could not raise the soft limit %d to %d: %s", soft, hard, exc)
    log.info("open files: limit %s (soft was %s, hard %s)", shown(limit), shown(soft), shown(hard))
    if limit != unlimited and limit < LOW_OPEN_FILES:
        log.warning(
            "open files: a limit of %d lets this process hold about %d connections (one file "
            "each, some kept for Redis and logs); raise the hard limit with `ulimit -n` in the "
            "shell that starts gochat, LimitNOFILE= in a systemd unit, or the container's "
            "nofile ulimit",
            limit,
            max(0, limit - 64),
        )


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (the default), else asyncio's own loop.

    uvloop (libuv underneath) runs the same application with less CPU per message and
    shorter pauses (docs/performance.md, S2), and its transports hold no reference cycle,
    so a closed connection is freed at once rather than at the next full collection.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    main()
