"""`har serve`'s workload: what one request may take and how its work is stopped.

- A request takes a slot (`workers` running + `queue` waiting) and, while its body arrives, an
  upload place (`uploads`); with none free it is refused (503, Retry-After) before its body is
  read. One client address holds at most `per_client` requests and `client_uploads` uploads at
  once (429 beyond).
- Work runs on thread pools (decoding and PyTorch release the GIL): `workers` threads that
  predict, one that explains (explanations hook the model and run one at a time; a thread of
  their own, so they never hold the predict workers). While it runs the request watches its
  client: one that hung up has its work stopped between packets and batches
  (pipeline.decoding.video.Cancelled), so the thread is free again within about a second.
- `stop_all` (Ctrl-C) stops every running job the same way; from then on requests get 503.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

from trainers.inference.forms import STOPPING, Refused

POLL_SECONDS = 0.25   # how often running work checks that its client is still there


def _release(counts: dict[str, int], who: str) -> None:
    counts[who] -= 1
    if not counts[who]:
        del counts[who]


class Workload:
    """The server's shared state: its thread pools, slots and upload places, the requests and
    uploads each client address has in progress, and the stop events of the work running now."""

    def __init__(self, workers: int, queue: int, uploads: int, per_client: int, client_uploads: int):
        self.per_client, self.client_uploads = per_client, client_uploads
        self.predicting = ThreadPoolExecutor(workers, thread_name_prefix="har-serve")
        self.explaining = ThreadPoolExecutor(1, thread_name_prefix="har-explain")
        self.slots = asyncio.Semaphore(workers + queue)
        self.places = asyncio.Semaphore(uploads)
        self.requests: dict[str, int] = {}    # requests in progress per client address
        self.sending: dict[str, int] = {}     # of those, uploads still arriving
        self.jobs: set[threading.Event] = set()
        self.stopping = threading.Event()     # set on Ctrl-C: every job stops, new requests get 503

    def stop_all(self) -> None:
        self.stopping.set()
        for e in list(self.jobs):
            e.set()

    def shutdown(self) -> None:
        self.stop_all()
        self.predicting.shutdown(wait=False, cancel_futures=True)
        self.explaining.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def admitted(self, who: str):
        """A slot for a request from address `who`, or Refused (503 when the server is stopping or
        full, 429 when this address holds its share) before anything of the request is read."""
        if self.stopping.is_set():
            raise Refused(503, STOPPING)
        if self.slots.locked():
            raise Refused(503, "busy: every worker and queue place is taken; try again shortly", retry=True)
        if self.places.locked():
            raise Refused(503, "busy: every upload place is taken; try again shortly", retry=True)
        if self.requests.get(who, 0) >= self.per_client:
            raise Refused(429, f"too many requests at once from this address; allowed: {self.per_client} "
                               "(har serve --per-client)", retry=True)
        if self.sending.get(who, 0) >= self.client_uploads:
            raise Refused(429, f"too many uploads at once from this address; allowed: {self.client_uploads} "
                               "(half of har serve --uploads)", retry=True)
        self.requests[who] = self.requests.get(who, 0) + 1
        try:
            async with self.slots:
                yield
        finally:
            _release(self.requests, who)

    @contextlib.asynccontextmanager
    async def uploading(self, who: str):
        """An upload place while a body from `who` arrives (counted against its share)."""
        self.sending[who] = self.sending.get(who, 0) + 1
        try:
            async with self.places:
                yield
        finally:
            _release(self.sending, who)

    async def run(self, gone, executor: ThreadPoolExecutor, work, *args):
        """`work(*args)` on `executor`, stopped (pipeline.decoding.video.Cancelled) when `await gone()`
        says the client left or the server stops: a job still queued is withdrawn, a running one
        is waited for until it stops (between packets and batches), so its slot and folder are
        released only then. Refused 499 (the client left) or 503 (stopping) for stopped work."""
        from pipeline.decoding import video

        stop = threading.Event()

        def job():
            with video.stoppable(stop):
                return work(*args)
        if self.stopping.is_set():   # an upload that finished after Ctrl-C: the pools are shut down by now
            raise Refused(503, STOPPING)
        self.jobs.add(stop)
        try:
            done = executor.submit(contextvars.copy_context().run, job)
        except RuntimeError:    # "cannot schedule new futures after shutdown": the server stopped meanwhile
            self.jobs.discard(stop)
            raise Refused(503, STOPPING) from None
        future = asyncio.wrap_future(done)
        try:
            while not future.done():
                await asyncio.wait({future}, timeout=POLL_SECONDS)
                if not future.done() and (self.stopping.is_set() or await gone()):
                    stop.set()
                    done.cancel()   # a queued job is withdrawn; a running one stops at its next check
                    # either way `future` settles later (a withdrawn job's on the loop's next turn):
                    # its result is read once it has, never before (InvalidStateError: a 500)
                    await asyncio.wait({future})
                    break
            return future.result()
        except (video.Cancelled, asyncio.CancelledError):
            if self.stopping.is_set():
                raise Refused(503, STOPPING) from None
            raise Refused(499, "the client left") from None
        finally:
            if not done.done():   # this request itself was cancelled while its job waited or ran:
                stop.set()        # the job is stopped, and its slot released once it has
                done.cancel()
                await asyncio.wait({future})
            self.jobs.discard(stop)
