"""Time and periodic actions of a run: one clock object and one rule for "is it time".

`RunClock` keeps the numbers a user reads about speed -- wall time, compile time, the time
to the first step and the steady images/s of training (the first, compiling step of each
process and all evaluation excluded) -- summed over the processes of a resumed run, and
checkpoints its own state. Compile time is what JAX itself reports tracing, lowering and
compiling (or fetching from the persistent cache) took, through `jax.monitoring`.
`Every` answers whether a periodic action (log, evaluate, checkpoint) is due at a step, and
`Periodic.at` what a step boundary owes: one rule, so that the loop cannot do one action
without what must come before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any

# jax.monitoring's duration events of a compilation: tracing to a jaxpr, lowering to MLIR,
# and the backend's compile (a persistent-cache hit reports the time to fetch the executable).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")

CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_compile = {"seconds": 0.0, "events": 0, "cache_hits": 0}
_listening = threading.Lock()
_listener_on = False


def _on_duration(event: str, seconds: float, **_: Any) -> None:
    if event in COMPILE_EVENTS:
        _compile["seconds"] += seconds
        _compile["events"] += 1


def _on_event(event: str, **_: Any) -> None:
    if event == CACHE_HIT_EVENT:
        _compile["cache_hits"] += 1


def compile_seconds() -> tuple[float, int]:
    """(seconds, events) of compilation JAX has reported in this process since the first call."""
    global _listener_on
    with _listening:
        if not _listener_on:
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            jax.monitoring.register_event_listener(_on_event)
            _listener_on = True
    return _compile["seconds"], _compile["events"]


def cache_hits() -> int:
    """Executables this process has taken from JAX's persistent compilation cache (since the first
    compile_seconds() call)."""
    return _compile["cache_hits"]


@dataclasses.dataclass(frozen=True)
class Every:
    """Due every `period` steps and at the last step of the run."""

    period: int
    last: int

    @classmethod
    def of(cls, *, steps: int | None, epochs: float, steps_per_epoch: int, last: int) -> Every:
        """A period given in steps, or else in epochs (rounded to whole steps, at least one)."""
        period = steps if steps is not None else max(1, round(epochs * steps_per_epoch))
        return cls(int(period), int(last))

    def __call__(self, step: int) -> bool:
        return step % self.period == 0 or step == self.last


@dataclasses.dataclass(frozen=True)
class Due:
    """The actions due at one step boundary. The loop performs them in this order: record, evaluate,
    checkpoint, stop."""

    record: bool  # a `train` record: closes the images/s window and fetches the epoch sums
    evaluate: bool
    checkpoint: bool
    stop: bool  # a signal asked the run to stop here

    @property
    def pauses_training(self) -> bool:
        """Evaluation and checkpointing are not training time: the throughput clock stops for them."""
        return self.evaluate or self.checkpoint


@dataclasses.dataclass(frozen=True)
class Periodic:
    """When a run logs, evaluates and checkpoints."""

    log: Every
    evaluate: Every
    checkpoint: Every

    def at(self, done: int, stop: bool = False) -> Due:
        """What is due after `done` steps. An evaluation is always preceded by a record (its epoch row
        reads the record's images/s and the epoch sums the record fetched) and followed by a checkpoint
        (which may be the best); a stop records and checkpoints the step it stops at."""
        evaluate = self.evaluate(done)
        return Due(record=self.log(done) or evaluate or stop, evaluate=evaluate,
                   checkpoint=evaluate or self.checkpoint(done) or stop, stop=stop)


class RunClock:
    """Wall, compile and steady training time of a run, across resumes.

    The steady window opens after the first (compiling) step of a process; `window_rate()`
    closes it, returning the images/s of the steps since it opened (None when no image was
    timed), and opens the next. `pause()` ... `resume()` brackets time that is not training
    (evaluating, checkpointing): the window keeps its images and the time it ran before the
    pause, and counts on from the resume.
    """

    def __init__(self, saved: dict[str, Any] | None = None, started: float | None = None):
        """`started`: the perf_counter() at which this process began the run (default: now); its wall
        time and the time to its first step count from it."""
        saved = saved or {}
        self._start = time.perf_counter() if started is None else started
        self._compile_mark = compile_seconds()
        self.wall_before = float(saved.get("wall_time_s", 0.0))
        self.compile_before = float(saved.get("compile_time_s", 0.0))
        self._first_step_compile = 0.0  # fallback where jax reports no compile events
        self.first_step_s: float | None = None  # this process: start to the first step's result
        steady = saved.get("steady") or {}
        self.steady_images = int(steady.get("images", 0))
        self.steady_seconds = float(steady.get("seconds", 0.0))
        self._window_start: float | None = None  # None: no window open, or paused
        self._window_open = False
        self._window_images = 0
        self._window_seconds = 0.0  # the window's time before its last pause

    def wall(self) -> float:
        """Seconds of wall time of the whole run: earlier processes plus this one so far."""
        return self.wall_before + time.perf_counter() - self._start

    def compiled(self, seconds: float) -> None:
        """The first step of this process took `seconds` (compilation included); timing starts now.

        Where this jax reports no compile events, the first step's seconds count as compile time."""
        now = time.perf_counter()
        self.first_step_s = now - self._start
        self._first_step_compile = seconds
        self._window_open = True
        self._window_start, self._window_images, self._window_seconds = now, 0, 0.0

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling over the run: earlier processes, plus what JAX reported in this one since
        the clock was made (the train step, evaluation steps, small eager computations)."""
        total, events = compile_seconds()
        here = total - self._compile_mark[0] if events > self._compile_mark[1] else self._first_step_compile
        return self.compile_before + here

    def stepped(self, images: int) -> None:
        """A timed step of `images` images was dispatched."""
        if self._window_open:
            self._window_images += images

    def window_rate(self) -> float | None:
        """Images/s of the steps since the window opened (None if none were timed); opens the next."""
        if not self._window_open:
            return None
        now = time.perf_counter()
        seconds = self._window_seconds + (now - self._window_start if self._window_start is not None else 0.0)
        rate = None
        if self._window_images > 0 and seconds > 0:
            rate = self._window_images / seconds
            self.steady_images += self._window_images
            self.steady_seconds += seconds
        self._window_start = now if self._window_start is not None else None
        self._window_images, self._window_seconds = 0, 0.0
        return rate

    def pause(self) -> None:
        """Stop counting time (evaluation, checkpointing follow); the window keeps its images and time so far."""
        if self._window_start is not None:
            self._window_seconds += time.perf_counter() - self._window_start
            self._window_start = None

    def resume(self) -> None:
        """Count time again after `pause()`."""
        if self._window_open and self._window_start is None:
            self._window_start = time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """`with clock.paused():` the time inside the block is not training time."""
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    def images_per_sec(self) -> float | None:
        """Steady training throughput of the whole run."""
        return self.steady_images / self.steady_seconds if self.steady_seconds > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall(), "compile_time_s": self.compile_s,
                "steady": {"images": self.steady_images, "seconds": self.steady_seconds}}
