"""Command line: the receiver's subcommands (`receiver --help` lists them)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.settings import Settings
from typing import Any

import uvicorn

__all__ = ["main"]


def _check_database(url: str) -> None:
    """Stop with one line naming RECEIVER_DATABASE_URL when the store cannot be written there
    (before anything starts, instead of a traceback from the lifespan)."""
    from pathlib import Path

    from receiver.settings import SettingsError

    if url.startswith(("postgresql://", "postgres://")):
        _check_postgres(url)
        return
    if not url.startswith("sqlite://"):
        return
    path = Path(url[len("sqlite:///") :] if url.startswith("sqlite:///") else url[len("sqlite://") :])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "the directory is not writable (SQLite keeps its journal there)")
    except OSError as exc:
        raise SettingsError(
            f"RECEIVER_DATABASE_URL: cannot write {str(path.absolute())!r} ({exc.strerror or exc})"
        ) from None


def _check_postgres(url: str) -> None:
    """Open the PostgreSQL store once (connect, migrate) so that a wrong URL or a server that is
    down stops `serve` with one line; the line names the server, never the password."""
    import asyncio
    from urllib.parse import urlsplit

    from receiver.errors import StoreUnavailable
    from receiver.settings import SettingsError
    from store import open_store

    async def probe() -> None:
        store = open_store(url)
        await store.open()
        await store.close()

    try:
        asyncio.run(probe())
    except (StoreUnavailable, OSError) as exc:
        parts = urlsplit(url)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        raise SettingsError(f"RECEIVER_DATABASE_URL: cannot open PostgreSQL at {where} ({exc})") from None


def _check_media(settings: Settings) -> None:
    """Stop with one line naming RECEIVER_MEDIA_URL when its bucket does not answer to the
    AWS_* credentials (before anything starts, instead of a capture failing on every file)."""
    import asyncio

    from receiver.media.base import MediaUnavailable
    from receiver.settings import SettingsError

    location = settings.media_s3
    if location is None:
        return
    from receiver.media.s3 import S3Media

    async def probe() -> None:
        media = S3Media(location)
        await media.open()
        try:
            await media.check()
        finally:
            await media.close()

    try:
        asyncio.run(probe())
    except (MediaUnavailable, ValueError) as exc:
        raise SettingsError(f"RECEIVER_MEDIA_URL: {location.url()}: {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.server import make_server, raise_fd_limit
    from receiver.settings import Settings, SettingsError

    env = dict(os.environ)
    if args.host is not None:
        env["RECEIVER_HOST"] = args.host
    if args.port is not None:
        env["RECEIVER_PORT"] = str(args.port)
    try:
        settings = Settings.from_env(env)
        _check_database(settings.database_url)
        _check_media(settings)
        _check_secrets(settings)
        raise_fd_limit(settings)
    except SettingsError as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.simulated:
        logging.getLogger("receiver").info("no RECEIVER_PROVIDER_URL: using the built-in simulated provider")
    app = create_app(settings)
    # The store's commit thread hands each batch back to the event loop; a short GIL switch
    # interval keeps that hand-off from waiting out the default 5 ms behind busy request work.
    sys.setswitchinterval(0.0005)
    server = make_server(app, settings)
    # What is loaded by now (modules, classes, the app) lives as long as the process: frozen, a
    # full collection no longer walks it. Under load those collections paused every request for
    # about 27 ms, several times a second; frozen, about 6 ms (scripts/bench ingest's p99).
    gc.collect()
    gc.freeze()
    server.run()
    return 0 if server.started else 1


async def _seal(settings: Settings, *, rotate: bool) -> int:
    from receiver.secrets_at_rest import SecretBox, seal_store
    from store import open_store

    store = open_store(settings.database_url)
    await store.open()
    try:
        return await seal_store(store, SecretBox(settings.secret_keys), rotate=rotate)
    finally:
        await store.close()


def _check_secrets(settings: Settings) -> None:
    """A store whose sealed secrets no configured key opens stops `serve` with one line."""
    import asyncio

    from receiver.secrets_at_rest import SecretKeyError
    from receiver.settings import SettingsError

    try:
        asyncio.run(_seal(settings, rotate=False))
    except SecretKeyError as exc:
        raise SettingsError(f"RECEIVER_SECRET_KEY: {exc}") from None


def _rotate_key(args: argparse.Namespace) -> int:
    import asyncio

    from receiver.secrets_at_rest import SecretKeyError
    from receiver.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(dict(os.environ))
        _check_database(settings.database_url)
        if not settings.secret_keys:
            raise SettingsError("RECEIVER_SECRET_KEY is unset: name the new key first, then the old ones")
        changed = asyncio.run(_seal(settings, rotate=True))
    except (SettingsError, SecretKeyError) as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return 2
    print(f"receiver rotate-key: {changed} subscriptions sealed under the first key")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from receiver.simulator.provider import SimConfig, Simulator

    config = SimConfig(
        secret=args.secret or os.environ.get("RECEIVER_SIMULATOR_SECRET", ""),
        api_key=args.api_key,
        duration_median=args.duration,
        duration_sigma=args.duration_sigma,
        time_scale=args.time_scale,
        payload=args.payload,
        fail_rate=args.fail_rate,
        drop_rate=args.drop_rate,
        duplicate_rate=args.duplicate_rate,
        reorder_rate=args.reorder_rate,
        delivery_delay=args.delay,
        bad_signature_rate=args.bad_signature_rate,
        get_error_rate=args.get_error_rate,
        get_throttle_rate=args.get_throttle_rate,
        retry_after=args.retry_after,
        answer_delay=args.answer_delay,
        seed=args.seed,
    )
    if config.secret:
        from receiver.rules.signatures import SecretFormatError, parse_key

        try:
            parse_key(config.secret)
        except SecretFormatError as exc:
            print(f"receiver simulate: --secret: {exc}", file=sys.stderr)
            return 2
    simulator = Simulator(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from receiver.server import Server

    server = Server(
        uvicorn.Config(simulator.app, host=args.host, port=args.port, access_log=False, log_level="warning")
    )
    server.name, server.log = "simulated provider", logging.getLogger("receiver.simulator.provider")
    server.run()
    return 0 if server.started else 1


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, so `--help` alone tells what a bare command
    does; help text that already names its default is left as it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings or "default" in text:
            return text
        if action.default is None or action.default is False:
            shown = "off" if action.nargs == 0 else "unset"
            return f"{text} (default: {shown})".lstrip()
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    """A parser (and so every subcommand's, nested ones too) with the defaults in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("receiver")
    except PackageNotFoundError:  # run from a checkout that was never installed
        from receiver import __version__

        return __version__


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="receiver",
        description="Webhook receiver for asynchronous video-generation APIs: submit, verify, "
        "dedupe, poll, fan out. Settings come from RECEIVER_* environment variables.",
        epilog="`receiver COMMAND --help` tells what a command does and its options.",
    )
    root.add_argument("--version", action="version", version=f"receiver {_version()}")
    commands = root.add_subparsers(
        dest="command", required=True, title="commands", metavar="COMMAND", parser_class=_Parser
    )

    serve = commands.add_parser(
        "serve",
        help="run the whole service: API, webhooks, poller, fan-out",
        description="Run the API, the webhook endpoints, the poller and the fan-out in one process. "
        "With no RECEIVER_PROVIDER_URL it also runs the simulated provider and submits to it.",
    )
    serve.add_argument("--host", help="listen address (default: RECEIVER_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: RECEIVER_PORT, else 8000)")
    serve.set_defaults(run=_serve)

    sim = commands.add_parser(
        "simulate",
        help="run the simulated provider on its own, with faults",
        description="Serve POST/GET /v1/videos like a provider and deliver signed webhooks to "
        "each task's callback_url, with the faults asked for. Durations and delays are in "
        "provider seconds (see --time-scale).",
    )
    sim.add_argument("--host", default="127.0.0.1", help="listen address")
    sim.add_argument("--port", type=int, default=9000, help="listen port (0: any free one)")
    sim.add_argument(
        "--secret",
        help="whsec_ secret that signs deliveries (default: "
        "RECEIVER_SIMULATOR_SECRET; unset: deliveries are unsigned)",
    )
    sim.add_argument("--api-key", help="bearer key the simulator requires (default: none, any caller)")
    sim.add_argument("--duration", type=_positive, default=3.0, help="median task duration, provider seconds")
    sim.add_argument("--duration-sigma", type=float, default=0.3, help="log-normal sigma of durations")
    sim.add_argument("--time-scale", type=_positive, default=1.0, help="provider seconds per real second")
    sim.add_argument(
        "--payload",
        choices=["full", "thin", "bare"],
        default="full",
        help="delivery shape: an event with the whole video, an event naming only its id, or "
        "the bare video object",
    )
    sim.add_argument("--fail-rate", type=_rate, default=0.0, help="share of tasks that fail")
    sim.add_argument("--drop-rate", type=_rate, default=0.0, help="share of deliveries never sent")
    sim.add_argument("--duplicate-rate", type=_rate, default=0.0, help="share of deliveries sent twice")
    sim.add_argument(
        "--reorder-rate",
        type=_rate,
        default=0.0,
        help="share of tasks that also send a stale in_progress after the terminal one",
    )
    sim.add_argument("--delay", type=float, default=0.0, help="provider seconds before delivering")
    sim.add_argument(
        "--bad-signature-rate", type=_rate, default=0.0, help="share of deliveries signed wrongly"
    )
    sim.add_argument("--get-error-rate", type=_rate, default=0.0, help="share of GETs answering 500")
    sim.add_argument("--get-throttle-rate", type=_rate, default=0.0, help="share of GETs answering 429")
    sim.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on 429")
    sim.add_argument("--answer-delay", type=float, default=0.0, help="seconds before POST answers")
    sim.add_argument(
        "--seed", type=int, help="seed of the random faults, for a run that repeats (default: none, random)"
    )
    sim.set_defaults(run=_simulate)

    rotate = commands.add_parser(
        "rotate-key",
        help="re-seal every stored secret under the first RECEIVER_SECRET_KEY key",
        description="Open every subscription secret and broker password with any key of "
        "RECEIVER_SECRET_KEY (or as stored in clear) and seal it again under the first key. Put the "
        "new key first, keep the old ones after it until this has run, then drop them.",
    )
    rotate.set_defaults(run=_rotate_key)

    from receiver.cli.replay import add_parser

    add_parser(commands)
    _retention_commands(commands)
    return root


def _retention_commands(commands: Any) -> None:
    from receiver.cli import backup
    from receiver.workers import pruner

    backup.add_parser(commands)
    pruner.add_parser(commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
