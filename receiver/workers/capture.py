"""Result files kept: due captures are claimed with a lease, downloaded through the outbound
address guard under a budget (total deadline, stall, size cap), streamed decoded to the media
store, and recorded with size and SHA-256."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable

import aiohttp

from receiver.context import Context
from receiver.errors import BlockedAddress, StoreError
from receiver.media.base import MediaStore
from receiver.outbound.call import BadEncoding, Body, Budget, TooLarge
from receiver.outbound.session import GuardedResolver, vet_destination
from receiver.rules.records import CaptureOutcome, CaptureRow
from receiver.settings import Network

__all__ = ["Capturer", "Refused", "capture_session"]

log = logging.getLogger("receiver.workers.capture")

LEASE = 15.0  # a claimed capture is due again this long after its last renewal (crash)
RENEW_EVERY = 5.0  # seconds between lease renewals while a download runs
RETRY_BASE, RETRY_CAP, MAX_ATTEMPTS = 10.0, 3600.0, 8
IDLE = 1.0  # seconds between looks for due captures while download slots are free
CLAIM_SPACING = 0.05  # seconds a wake-up waits after a look that claimed nothing (a cheap read)
CHUNK = 64 * 1024
# A file no larger than this is done with its download slot once its last byte is in: the slot
# takes the next file while this one is stored (at most `concurrency` of these at once, each
# holding at most this much). A larger one holds its slot until it is stored, as its parts are
# sent while it downloads anyway: memory stays about `concurrency` large files' worth.
HANDOFF_BYTES = 8 * 1024 * 1024
# A download must bring at least this much in every stall interval (30 s): about 2 KiB/s. Less
# (a byte now and then) holds one of the few download slots for nothing; it is retried later.
STALL_BYTES = 64 * 1024


class Refused(Exception):
    """The file will not be kept, whatever we retry (too large, gone, forbidden)."""


def capture_session(allow: tuple[Network, ...], connections: int = 8) -> aiohttp.ClientSession:
    """The downloads' HTTP client: every new connection's addresses vetted by GuardedResolver.
    It sets no timeout and decodes nothing itself: each download runs under its budget
    (receiver.outbound.call), which also undoes a Content-Encoding sent in spite of our `identity`."""
    connector = aiohttp.TCPConnector(
        limit=connections,
        resolver=GuardedResolver(allow),
        use_dns_cache=False,
        ssl=ssl.create_default_context(),
    )
    timeout = aiohttp.ClientTimeout(total=None)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


class Capturer:
    """Claims due captures and keeps each file once; a crash leaves the row due again when its
    lease runs out, and the download starts over (the partial file is never under the key)."""

    def __init__(
        self,
        ctx: Context,
        http: aiohttp.ClientSession,
        media: MediaStore,
        *,
        trusted_origin: str | None = None,
        concurrency: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        self._ctx = ctx
        self._http = http
        self._media = media
        self._trusted = trusted_origin  # the built-in simulator's own URL, under `serve` alone
        self._limit = concurrency
        self._downloading = 0  # download slots taken
        self._storing = asyncio.Semaphore(concurrency)  # small files being stored, slots given back
        self._rng = rng or random.Random()
        self._running: set[asyncio.Task[None]] = set()
        self._finished = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim due captures whenever a download slot is free: at once when a result is
        recorded (a client may download the moment its task completes) or when a slot frees
        after a claim that filled them all, else looking every IDLE seconds or when a retry
        falls due. A look that claimed nothing is not repeated for a wake-up within
        CLAIM_SPACING: a burst of results without files (or of downloads failing at once) must
        not crowd the store, which the acknowledgement path shares. Every other look claims at
        least one file, whose download ends in a write of its own anyway."""
        wakeup = self._ctx.capture_wakeup
        loop = asyncio.get_running_loop()
        quiet_until = 0.0  # loop time: a wake-up before it waits for it (the last look was idle)
        full = False  # the last claim filled every free slot, so more may be due
        while not stop.is_set():
            self._finished.clear()
            room = self._limit - self._downloading
            delay: float | None = IDLE
            if room > 0:
                wakeup.clear()  # before looking, so a result recorded meanwhile is not missed
                taken = 0
                try:
                    due = await self._ctx.store.next_capture_due()
                    now = self._ctx.clock()
                    if due is not None and due <= now:
                        taken = self._spawn(await self._ctx.store.claim_captures(now, room, LEASE))
                    elif due is not None:
                        delay = min(IDLE, due - now)
                except StoreError as exc:
                    log.warning("capture: store unavailable (%s)", type(exc).__name__)
                full = taken == room
                quiet_until = 0.0 if taken else loop.time() + CLAIM_SPACING
            if full or room <= 0:
                # Every slot is busy: look again when one frees. A wake-up meanwhile stays set,
                # and that look sees whatever it announced.
                events, delay = (stop, self._finished), None
            else:
                events = (stop, wakeup)
            waiters = [asyncio.ensure_future(e.wait()) for e in events]
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            pause = quiet_until - loop.time()
            if wakeup.is_set() and pause > 0 and not stop.is_set():
                # Results come in bursts: one look per CLAIM_SPACING serves them all while
                # there is nothing to claim. Only a stop cuts the spacing short.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=pause)
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    def _spawn(self, rows: list[CaptureRow]) -> int:
        for row in rows:
            self._downloading += 1
            task = asyncio.create_task(self._keep(row))
            self._running.add(task)
            task.add_done_callback(self._done)
        return len(rows)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._finished.set()

    async def _keep(self, row: CaptureRow) -> None:
        ctx = self._ctx
        renewing = asyncio.create_task(self._renew(row.pk))
        held = True

        def handoff() -> None:
            """Give this capture's download slot back (once): its download is over. Its record
            is written after, outside the slot (the claim's lease still covers the row)."""
            nonlocal held
            if held:
                held = False
                self._downloading -= 1
                self._finished.set()

        try:
            outcome = await self._download(row, handoff)
        except Exception as exc:  # a bug here must not kill the worker: retry later, say why
            log.exception("capture: %s failed unexpectedly", row.variant)
            outcome = self._retry(row, f"internal error: {type(exc).__name__}")
        finally:
            handoff()
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        ctx.metrics.captures.labels(outcome=outcome.status if outcome.status != "pending" else "retry").inc()
        try:
            await ctx.store.finish_capture(outcome)
        except StoreError as exc:
            log.warning("capture: could not record %s (%s)", row.variant, type(exc).__name__)

    async def _renew(self, pk: int) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            with contextlib.suppress(StoreError):
                await self._ctx.store.renew_capture(pk, self._ctx.clock() + LEASE)

    def budget(self) -> Budget:
        """What one download may take: RECEIVER_MEDIA_TIMEOUT in all, the stall interval, the cap."""
        settings = self._ctx.settings
        return Budget(
            deadline=settings.media_timeout,
            cap=settings.media_max_bytes,
            stall=settings.media_stall,
            stall_bytes=STALL_BYTES,
        )

    @contextlib.asynccontextmanager
    async def fetch(
        self, row: CaptureRow, budget: Budget
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, Body]]:
        """The file at the result's URL, through the address guard, asked for as it is (a file
        kept compressed would be served corrupt): its answer and its decoded body. Run inside
        `budget.bound()`. Refused when it will never come; an aiohttp error when a retry may."""
        cap = budget.cap
        if self._trusted is None or not row.url.startswith(self._trusted + "/"):
            await vet_destination(row.url, self._ctx.settings.outbound_allow)
        request = self._http.get(row.url, allow_redirects=False, headers={"accept-encoding": "identity"})
        async with await budget.head(request) as response:
            if response.status in (408, 425, 429) or response.status >= 500:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="retryable"
                )
            if response.status != 200:
                raise Refused(f"the file's URL answered {response.status}")
            try:
                body = budget.body(
                    response.content.iter_chunked(CHUNK), response.headers.get("content-encoding")
                )
            except BadEncoding as exc:
                raise Refused(str(exc)) from None
            length = response.content_length
            # An encoded length says little of the decoded size, which is what the cap is for.
            if length is not None and length > cap and not body.encoded:
                raise Refused(f"{length} bytes is over RECEIVER_MEDIA_MAX_BYTES ({cap})")
            yield response, body

    async def _download(self, row: CaptureRow, handoff: Callable[[], None]) -> CaptureOutcome:
        ctx = self._ctx
        budget = self.budget()
        cap = budget.cap
        key = f"{row.task_pk}/{row.variant}"
        try:
            async with budget.bound(), self.fetch(row, budget) as (response, body):
                length = response.content_length
                content_type = (response.headers.get("content-type") or "application/octet-stream")[:255]
                writer = self._media.writer(key)
                digest = hashlib.sha256()
                try:
                    async for chunk in body:
                        digest.update(chunk)
                        await writer.write(chunk)
                    if length is not None and body.received != length:
                        raise aiohttp.ClientPayloadError(f"got {body.received} of {length} bytes")
                    if body.size > HANDOFF_BYTES:
                        await writer.commit()
                    else:
                        # Stored while the next download runs. The download slot is held until
                        # this file may be stored, so no more small files wait in memory than
                        # there are slots.
                        async with self._storing:
                            handoff()
                            await writer.commit()
                except BaseException:
                    await writer.abort()
                    raise
                size = body.size
        except TooLarge:
            return CaptureOutcome(
                row.pk, "failed", ctx.clock(), error=f"more than RECEIVER_MEDIA_MAX_BYTES ({cap}) bytes"
            )
        except (Refused, BlockedAddress) as exc:
            return CaptureOutcome(row.pk, "failed", ctx.clock(), error=str(exc)[:300])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, BadEncoding) as exc:
            # Stalled and DeadlineExceeded land here too: the next attempt starts over.
            error = f"{type(exc).__name__}: {exc}"[:300]
            if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, BlockedAddress):
                return CaptureOutcome(row.pk, "failed", ctx.clock(), error=str(exc.os_error)[:300])
            return self._retry(row, error)
        return CaptureOutcome(
            row.pk,
            "kept",
            ctx.clock(),
            size=size,
            sha256=digest.hexdigest(),
            content_type=content_type,
            key=key,
        )

    def _retry(self, row: CaptureRow, error: str) -> CaptureOutcome:
        now = self._ctx.clock()
        if row.attempts + 1 >= MAX_ATTEMPTS:
            return CaptureOutcome(
                row.pk, "failed", now, error=f"gave up after {MAX_ATTEMPTS} attempts: {error}"
            )
        delay = min(RETRY_CAP, RETRY_BASE * 2**row.attempts) * self._rng.uniform(0.5, 1.0)
        return CaptureOutcome(row.pk, "pending", now, error=error, next_attempt_at=now + delay)
