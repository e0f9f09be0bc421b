"""One thread that sends file bytes to sockets (``os.sendfile``) for every zero-copy response body of
a server, so the kernel's copying runs beside the event loop instead of on its thread.

The event loop hands a :class:`FileSender` a socket and the ``(file, offset, count)`` extents to send
on it, and waits; the sender thread owns an epoll of its own, sends on every socket that can take
bytes in turn, at most :data:`QUANTUM_BYTES` a visit (a reader that stalls leaves the other sockets'
turns as they were: its socket just waits in the epoll), and wakes the waiting task when its extents
are sent or failed. ``os.sendfile`` and ``epoll.poll`` release the GIL, so on a machine of several
cores the copying of bulk bodies no longer takes turns of the loop that small requests need.

Ownership: the sender sends on a duplicate of the socket's descriptor (closing the socket
meanwhile cannot make it send on whatever reuses the number), and :meth:`FileSender.send` returns
only once the thread is done with the job's descriptors (sent, failed, or dropped after a
cancellation), so the caller may close its files as soon as it returns. :func:`running` owns the
thread: leaving it fails every unfinished send with :class:`SenderClosed` and joins the thread.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from typing import Any, Final

import outcome
import trio

FileExtent = tuple[int, int, int]
"""``(file descriptor, offset, count)``: body bytes that lie in a file."""

QUANTUM_BYTES: Final = 1024 * 1024
"""The most one visit to a writable socket sends before the next socket's turn (one sendfile call
per extent within it): big enough that the thread's own Python work per byte is small."""

SENDER_NICE: Final = 2
"""The thread's nice value, a little below the event loop's priority: when the cores are short
(other work on the machine), the loop's small requests get the CPU first and bulk sends the rest.
Measured (bench load, 2 shared cores): nice 0 let manifest GET p99 reach the reference's, nice 8
cut pull throughput by a third, nice 2 kept both goals."""

# sendfile refused for this pair of descriptors (the file's filesystem cannot, an odd socket): the
# caller sends the rest of the job's bytes another way (:class:`SendfileUnsupported`).
log = logging.getLogger("ipfsreg.http")

_SENDFILE_UNSUPPORTED: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


class FileShorterThanSent(OSError):
    """A zero-copy send named bytes past the end of its file (the response is cut short)."""


class SenderClosed(OSError):
    """The file sender stopped (its server is shutting down) before these bytes were sent."""


class SendfileUnsupported(OSError):
    """The kernel refused sendfile for a file or socket; ``remaining``: the extents not sent yet."""

    def __init__(self, remaining: tuple[FileExtent, ...]) -> None:
        super().__init__("sendfile is not supported for this file or socket")
        self.remaining = remaining


class _Job:
    """One :meth:`FileSender.send`: the extents left, and who waits."""

    __slots__ = ("armed", "cancelled", "extents", "fd", "index", "left", "offset", "result", "task")

    def __init__(self, fd: int, extents: Sequence[FileExtent], task: trio.lowlevel.Task) -> None:
        self.fd = fd
        self.extents = tuple(extents)
        self.index = 0
        self.offset = self.extents[0][1] if self.extents else 0
        self.left = self.extents[0][2] if self.extents else 0
        self.task = task
        self.armed = False  # registered in the thread's epoll (once; re-armed by modify)
        self.cancelled: Callable[[], Any] | None = None  # the waiter's raise_cancel, once cancelled
        self.result: outcome.Outcome[object] | None = None

    def remaining(self) -> tuple[FileExtent, ...]:
        if self.index >= len(self.extents):
            return ()
        file = self.extents[self.index][0]
        return ((file, self.offset, self.left), *self.extents[self.index + 1 :])


_BLOCKED: Final = 0
_MORE: Final = 1
_DONE: Final = 2


class FileSender:
    """The sender thread and what the event loop says to it (see the module doc)."""

    def __init__(self, *, quantum: int = QUANTUM_BYTES) -> None:
        self.quantum = quantum
        self._token = trio.lowlevel.current_trio_token()
        self._inbox: collections.deque[tuple[str, _Job | None]] = collections.deque()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(self._wake, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="ipfsreg file sender", daemon=True)
        self._closed = False
        self.jobs = 0
        """Sends handed to the thread so far (for tests and metrics)."""

    # --- the event loop's side ------------------------------------------------------------------

    async def send(self, sock: trio.socket.SocketType, extents: Sequence[FileExtent]) -> None:
        """Send ``extents`` in order on ``sock``; return when all are sent. Raises what sendfile
        raised (``BrokenPipeError``, ``ConnectionResetError``...), :class:`FileShorterThanSent`,
        :class:`SendfileUnsupported` or :class:`SenderClosed`; on cancellation the rest is
        dropped (the body is cut short). Returns only when the thread no longer uses the files."""
        if self._closed:
            raise SenderClosed("the file sender has stopped")
        extents = [extent for extent in extents if extent[2] > 0]
        if not extents:
            return
        job = _Job(os.dup(sock.fileno()), extents, trio.lowlevel.current_task())
        self.jobs += 1
        self._post("send", job)

        def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
            job.cancelled = raise_cancel
            self._post("cancel", job)
            return trio.lowlevel.Abort.FAILED  # the thread answers once it has dropped the job

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _post(self, what: str, job: _Job | None) -> None:
        self._inbox.append((what, job))
        os.eventfd_write(self._wake, 1)

    def _deliver(self, job: _Job) -> None:
        """On the event loop: wake the job's task with its outcome."""
        result = job.result
        assert result is not None
        if job.cancelled is not None and isinstance(result, outcome.Error) and result.error is _DROPPED:
            result = outcome.capture(job.cancelled)
        trio.lowlevel.reschedule(job.task, result)

    def start(self) -> None:
        self._thread.start()

    async def aclose(self) -> None:
        """Fail every unfinished send with :class:`SenderClosed` and join the thread."""
        if self._closed:
            return
        self._closed = True
        self._post("stop", None)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
            # The thread's last deliveries were queued before it ended: let them run.
            await trio.lowlevel.checkpoint()
        self._epoll.close()
        os.close(self._wake)

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        with suppress(OSError):  # a nice value is per thread on Linux; elsewhere it stays as it is
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SENDER_NICE)
        ready: collections.deque[_Job] = collections.deque()
        armed: dict[int, _Job] = {}  # jobs waiting for their socket to take bytes, by descriptor
        try:
            self._loop(ready, armed)
        except BaseException as exc:
            # A bug here must not leave tasks waiting for good: every job still held fails.
            log.exception("the file sender thread failed")
            failure = SenderClosed(f"the file sender failed: {exc!r}")
            for job in (*ready, *armed.values()):
                if job.result is None:
                    self._finish(job, outcome.Error(failure))
            self._closed = True

    def _loop(self, ready: collections.deque[_Job], armed: dict[int, _Job]) -> None:
        while True:
            stop = False
            while self._inbox:
                what, job = self._inbox.popleft()
                if what == "stop":
                    stop = True
                elif what == "send" and job is not None:
                    ready.append(job)
                elif what == "cancel" and job is not None and job.result is None:
                    if job in ready:
                        ready.remove(job)
                    armed.pop(job.fd, None)
                    self._finish(job, outcome.Error(_DROPPED))
            if stop:
                for job in (*ready, *armed.values()):
                    self._finish(job, outcome.Error(SenderClosed("the server stopped during the send")))
                return
            for fd, _ in self._epoll.poll(0 if ready else -1):
                if fd == self._wake:
                    with suppress(BlockingIOError):
                        os.eventfd_read(self._wake)
                    continue
                job_ = armed.pop(fd, None)
                if job_ is not None:
                    ready.append(job_)
            for _ in range(len(ready)):
                job = ready.popleft()
                state = self._advance(job)
                if state == _MORE:
                    ready.append(job)
                elif state == _BLOCKED:
                    events = select.EPOLLOUT | select.EPOLLONESHOT
                    try:
                        if job.armed:
                            self._epoll.modify(job.fd, events)
                        else:
                            self._epoll.register(job.fd, events)
                            job.armed = True
                    except OSError as exc:
                        self._finish(job, outcome.Error(exc))
                        continue
                    armed[job.fd] = job

    def _advance(self, job: _Job) -> int:
        """Send up to a quantum of ``job``: whether it is done, can take more now, or must wait."""
        budget = self.quantum
        while budget > 0:
            file = job.extents[job.index][0]
            want = min(job.left, budget)
            try:
                sent = os.sendfile(job.fd, file, job.offset, want)
            except BlockingIOError:
                return _BLOCKED
            except OSError as exc:
                if exc.errno in _SENDFILE_UNSUPPORTED and job.offset == job.extents[job.index][1]:
                    self._finish(job, outcome.Error(SendfileUnsupported(job.remaining())))
                else:
                    self._finish(job, outcome.Error(exc))
                return _DONE
            if sent == 0:
                short = FileShorterThanSent(f"file ends before byte {job.offset + job.left} of a body")
                self._finish(job, outcome.Error(short))
                return _DONE
            job.offset += sent
            job.left -= sent
            budget -= sent
            if job.left == 0:
                job.index += 1
                if job.index == len(job.extents):
                    self._finish(job, outcome.Value(None))
                    return _DONE
                job.offset, job.left = job.extents[job.index][1], job.extents[job.index][2]
            elif sent < want:
                return _BLOCKED  # the socket's buffer is full: the next call would say EAGAIN
        return _MORE

    def _finish(self, job: _Job, result: outcome.Outcome[object]) -> None:
        """The thread is done with ``job``: release its socket descriptor, wake its task."""
        if job.armed:
            # Before the close: the registration belongs to the socket, which stays open.
            with suppress(OSError):
                self._epoll.unregister(job.fd)
            job.armed = False
        os.close(job.fd)
        job.result = result
        with suppress(trio.RunFinishedError):  # the loop is gone, and its tasks with it
            self._token.run_sync_soon(self._deliver, job)


class _Dropped(Exception):
    """Internal: the thread dropped a job that was cancelled."""


_DROPPED: Final = _Dropped()


_current: ContextVar[FileSender | None] = ContextVar("ipfsreg_file_sender", default=None)


def current() -> FileSender | None:
    """The file sender of the server this task runs in (:func:`running`), if any."""
    return _current.get()


@asynccontextmanager
async def running() -> AsyncIterator[FileSender]:
    """A sender thread for the tasks started inside (a server's connections: :func:`current`),
    stopped on exit."""
    sender = FileSender()
    sender.start()
    token = _current.set(sender)
    try:
        yield sender
    finally:
        _current.reset(token)
        await sender.aclose()
