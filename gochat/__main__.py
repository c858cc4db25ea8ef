"""`gochat`: CLI flags over the environment -> Settings -> logging -> run the app."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from .client.cli import add_commands, run
from .config import OPTIONS, Settings

log = logging.getLogger("gochat")


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
            print=serving,
            access_log=None,
            loop=loop,
        )
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        parser.exit(
            2,
            f"gochat: port {settings.port} is already in use on {settings.host}: stop what "
            f"listens there, or pick another port with PORT=<port> or --port <port>\n",
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
