"""The command line as a new user meets it: --version, --help that tells every default, and a
simulator that says where it listens."""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version

import httpx
import pytest

from receiver.cli.main import main, parser
from tests.conftest import free_socket

pytestmark = pytest.mark.anyio


def commands(root: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every subcommand's words, nested ones too (`replay events`)."""
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from commands(sub, (*path, name))


def option_entries(help_text: str) -> list[str]:
    """Each option's entry of a --help text, its wrapped lines joined."""
    entries: list[str] = []
    current: list[str] | None = None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = [line.strip()]
            entries.append("")
        elif current is not None and line.startswith("    ") and line.strip():
            current.append(line.strip())
        else:
            current = None
        if current is not None:
            entries[-1] = " ".join(current)
    return entries


def help_of(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*words, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def test_version_is_the_installed_one() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "receiver", "--version"], capture_output=True, text=True, timeout=60
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == f"receiver {version('receiver')}"


def test_top_level_help_lists_every_command_with_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of((), capsys)
    top = [words[0] for words in commands(parser()) if len(words) == 1]
    assert {"serve", "simulate", "replay"} <= set(top)
    for name in top:
        # Its line of help beside it, or (a name longer than argparse's column) just below it.
        line = rf"^ +{re.escape(name)}(?: +\S|\n {{6,}}\S)"
        assert re.search(line, text, re.MULTILINE), f"{name} missing:\n{text}"
    assert "--version" in text


@pytest.mark.parametrize("words", sorted(commands(parser())), ids=" ".join)
def test_every_option_says_its_default(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(words, capsys)
    entries = [e for e in option_entries(text) if not e.startswith("-h, --help")]
    silent = [e for e in entries if "default" not in e]
    assert not silent, f"`receiver {' '.join(words)} --help`: options that hide their default: {silent}"


async def test_simulate_says_where_it_listens_once_it_does() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "simulate",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any("listening on" in line for line in seen):
            left = deadline - time.monotonic()
            assert left > 0 and process.returncode is None, f"no listening line: {seen}"
            line = await asyncio.wait_for(process.stderr.readline(), left)
            assert line, f"simulate exited: {seen}"
            seen.append(line.decode())
        announced = [line for line in seen if "listening on" in line]
        assert len(announced) == 1
        assert announced[0].rstrip().endswith(f"simulated provider listening on http://127.0.0.1:{port}")
        # The line comes once the socket accepts: a client that read it is answered at once.
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"http://127.0.0.1:{port}/v1/videos/video_nope")
        assert answer.status_code == 404
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 30)
