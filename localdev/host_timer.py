"""Timer triggers of the local host: NCRONTAB (six fields, seconds first) or TimeSpan.

Each timer runs on its own thread. An occurrence that starts more than
``past_due_after`` seconds after its scheduled time (the previous run overran, or the
process was busy) is passed ``past_due=True``, as the Functions host flags late runs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta

from azure.functions.timer import TimerRequest
from croniter import croniter

from localdev.host_app import HostError, Invocation, Recorder, TimerFunction

_log = logging.getLogger(__name__)

_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})")


def next_occurrence(schedule: str, after: datetime) -> datetime:
    """The first occurrence of ``schedule`` strictly after ``after`` (UTC)."""
    timespan = _TIMESPAN.fullmatch(schedule.strip())
    if timespan:
        days, hours, minutes, seconds = (int(g or 0) for g in timespan.groups())
        interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if interval <= timedelta(0):
            raise HostError(f"timer schedule {schedule!r} is not a positive interval")
        return after + interval

    fields = schedule.split()
    if len(fields) != 6:
        raise HostError(
            f"timer schedule {schedule!r}: NCRONTAB needs 6 fields "
            "({second} {minute} {hour} {day} {month} {day-of-week})"
        )
    try:
        result: datetime = croniter(schedule, after, second_at_beginning=True).get_next(
            datetime
        )
    except (ValueError, KeyError) as exc:
        raise HostError(f"timer schedule {schedule!r} is invalid: {exc}") from None
    return result


class TimerListener:
    """Runs one timer-triggered function on its schedule until stopped."""

    def __init__(
        self, function: TimerFunction, recorder: Recorder, past_due_after: float = 1.0
    ) -> None:
        self._function = function
        self._recorder = recorder
        self._past_due_after = past_due_after
        next_occurrence(function.schedule, datetime.now(UTC))  # fail early
        self._running = threading.Event()

    def thread(self, stop: threading.Event) -> threading.Thread:
        return threading.Thread(
            target=self._run, args=(stop,), name=f"timer-{self._function.name}"
        )

    def busy(self) -> bool:
        return self._running.is_set()

    def _run(self, stop: threading.Event) -> None:
        due = datetime.now(UTC)
        if self._function.run_on_startup:
            self._invoke(due, due)
        while not stop.is_set():
            due = next_occurrence(self._function.schedule, due)
            now = datetime.now(UTC)
            # Missed occurrences collapse into one late run, as the Functions host does.
            while (following := next_occurrence(self._function.schedule, due)) <= now:
                due = following
            wait = (due - now).total_seconds()
            if wait > 0 and stop.wait(wait):
                return
            self._invoke(due, datetime.now(UTC))

    def _invoke(self, due: datetime, now: datetime) -> None:
        past_due = (now - due).total_seconds() > self._past_due_after
        request = TimerRequest(past_due=past_due)
        self._running.set()
        started = time.monotonic()
        self._recorder.started(activity=False)
        outcome, error = "succeeded", None
        try:
            self._function.call(**{self._function.param: request})
        except Exception as exc:
            _log.exception("timer %s failed", self._function.name)
            outcome, error = "failed", type(exc).__name__
        finally:
            self._running.clear()
        self._recorder.record(
            Invocation(
                self._function.name,
                outcome,
                time.monotonic() - started,
                due.isoformat(),
                error=error,
            ),
            activity=False,
        )
