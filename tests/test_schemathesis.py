"""schemathesis over GET /openapi.json against the real receiver on a loopback socket: no 5xx, and
every answer matches the document's status codes, media types, headers and schemas."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, StackFactory

pytestmark = pytest.mark.anyio

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
    )
)
EXAMPLES = 12  # per operation and phase: about 1,000 requests, under a minute here
TIME_BOX = 240  # seconds for the whole run, start-up included


@pytest.mark.slow
async def test_the_api_conforms_to_its_document(make_stack: StackFactory, tmp_path: Path) -> None:
    sim = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.1)
    async with make_stack(sim, callback_secret=SECRET, api_keys=("st-key",)) as stack:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "schemathesis.cli", "run", f"{stack.url}/openapi.json"),
            *("--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", "1", "--workers", "1"),
            *("--phases", "examples,coverage,fuzzing,stateful", "--request-timeout", "10"),
            *("--header", "Authorization: Bearer st-key"),
            # The event stream never ends by design; test_fanout.py covers it.
            *("--exclude-path", "/v1/events/stream", "--report-dir", str(tmp_path)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=TIME_BOX)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        text = output.decode(errors="replace")
        assert process.returncode == 0, text[-20_000:]
        print(text[text.rfind("SUMMARY") :])  # what was tested, for `pytest -s`
