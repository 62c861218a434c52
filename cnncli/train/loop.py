"""The training loop: `train_and_evaluate(config, run_path)`.

One code path for one device or many: the state is replicated over a `data` mesh axis and
every batch is sharded along it. The loop body reads as the algorithm -- get a batch, step,
then what the step boundary owes (log, evaluate, checkpoint, stop: `Periodic.at`, performed
in that order by one method) -- and every exit (success, NaN, SIGINT/SIGTERM, any exception)
leaves status.json truthful, the metrics files flushed and closed, the checkpoint in flight
finished, and the run directory's lock released. A `Training` is built without touching a
file; its `session()` is the step that claims the run and opens its outputs.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

from cnncli import errors, interrupts
from cnncli.config import Config
from cnncli.errors import ConfigError, TrainingError, TrainingInterrupted
from cnncli.rundir import RunDir
from cnncli.train.clock import Every, Periodic, RunClock, cache_hits
from cnncli.train.exits import (WRITE_ERRNOS, SignalCatcher, comparable, says_how_it_ended, signal_name,
                                 write_error)
from cnncli.train.logbook import TrainLog, epoch_line
from cnncli.train.resume import check_same_data, starts_over
from cnncli.train.runfiles import opening_lines, state_memory_line, topology_note, write_start_files
from cnncli.train.setup import TrainingSetup, build_training, model_tree, restore_training, train_tree


def train_and_evaluate(cfg: Config, run_path: str | Path, *, resume: bool = False, force: bool = False,
                       console=None, init=None, started: float | None = None, restart: bool = False
                       ) -> dict[str, Any]:
    """Train `cfg` into the run directory `run_path` (new, or resumed), evaluate the best checkpoint on the
    test split, return a summary dict. Nothing is written before the config, data, model and (on resume)
    checkpoint have been checked. `init(template, num_classes)` starts a new run from stored weights
    (see `build_training`); a resumed run takes its weights from its checkpoint. `started`: the
    time.perf_counter() the command began at, for the time to the first step (default: now). A resumed
    run with no checkpoint left whose records show progress is refused unless `restart`."""
    started = time.perf_counter() if started is None else started
    from cnncli.checkpoint import CheckpointManager
    from cnncli.console import stderr_console
    from cnncli.distributed import is_primary, peer_failure, primary_decides, same_on_every_process

    console = console or stderr_console()
    with contextlib.ExitStack() as stack:
        # several processes: process 0 alone owns (locks, creates, writes) the run directory, and a
        # refusal there is raised on every process
        if resume:
            run = RunDir.open(run_path)
            primary_decides(lambda: (run.check_files(), stack.enter_context(run.lock())))
        else:
            primary_decides(lambda: RunDir.check_create(run_path, force=force))  # refuse before any work
        same_on_every_process(comparable(cfg), "the config (file and --set)")
        setup = build_training(cfg, None if resume else init)
        t = setup.cfg.train
        restored = None
        if resume:
            primary_decides(lambda: check_same_data(run, setup.data))
            if primary_decides(lambda: starts_over(run, restart)):  # before the manager creates anything
                console.print(f"{run.path} has no checkpoint: training starts from step 0")
            manager = stack.enter_context(_closing(CheckpointManager(
                run.checkpoints, keep_last=t.keep_last, keep_best=t.keep_best, best_metric=t.best_metric)))
            restored = restore_training(setup, manager, run.path, console)
            reached = int(restored[1].get("step", 0)) if restored is not None else 0
            if reached > setup.total_steps:  # training would record an end it never reached
                raise ConfigError(f"--resume {run.path}: the run is at step {reached}, past the {setup.total_steps} "
                                  "steps the config now asks for; a resume may extend a run, not shorten it")
        else:
            run = primary_decides(lambda: RunDir.create(run_path, force=force)) or RunDir(run_path)
            if is_primary():  # owned by this process from here on
                stack.callback(run.release)
                stack.enter_context(says_how_it_ended(run))
            manager = stack.enter_context(_closing(CheckpointManager(
                run.checkpoints, keep_last=t.keep_last, keep_best=t.keep_best, best_metric=t.best_metric)))
        training = Training(setup, run, manager, console, restored, started)
        stack.enter_context(training.session())  # the start step: from here on the run's files change
        try:
            return training.run()
        except TrainingInterrupted:
            raise
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise write_error(exc, run, manager.last_complete_step()) from None
            raise
        except Exception as exc:
            failure = peer_failure(exc)
            if failure is not None:
                raise failure from None
            raise


@contextlib.contextmanager
def _closing(manager):
    """Close a checkpoint manager on the way out, finishing the save in flight."""
    try:
        yield manager
    finally:
        with contextlib.suppress(Exception):
            manager.close()


class Training:
    """One process's part of a run, from its first step to results.json.

    Constructing one touches no file and prints nothing; `with training.session():` is the start
    step (claims the run, writes its description, opens the metrics writers, catches signals) and
    records every way out; `run()` trains inside it."""

    def __init__(self, setup: TrainingSetup, run: RunDir, manager, console, restored: tuple[Any, dict] | None,
                 started: float | None = None):
        from cnncli.distributed import is_primary, topology
        from cnncli.metrics import NullMetricsWriter

        self.setup, self.run_dir, self.manager, self.console = setup, run, manager, console
        self.primary = is_primary()  # the one process that writes the run directory's files
        self.topology = topology(setup.mesh, setup.cfg.train.batch_size)
        self.cfg, self.t, self.spe = setup.cfg, setup.cfg.train, setup.steps_per_epoch
        self.state, meta = restored if restored is not None else (setup.state, {})
        self.start_step = int(meta.get("step", 0))
        self.images_seen = int(meta.get("images_seen", 0))
        self.bad_evals = int(meta.get("bad_evals", 0))
        self.stopped_early = False
        self.clock = RunClock(meta, started)
        self.catcher = SignalCatcher()
        t, last, spe = self.t, setup.total_steps, self.spe
        self.periodic = Periodic(
            log=Every(t.log_every_steps, last),
            evaluate=Every.of(steps=t.eval_every_steps, epochs=t.eval_every_epochs, steps_per_epoch=spe, last=last),
            checkpoint=Every.of(steps=t.checkpoint_every_steps, epochs=t.checkpoint_every_epochs,
                                steps_per_epoch=spe, last=last))
        self._resumed, self._log_state = restored is not None, meta.get("log")
        self._cluster_before = meta.get("cluster")  # the topology the checkpoint was written on
        self._in_session = False  # inside `session()`: the run's outputs are open
        self._claimed = False  # status.json says "running" for this process (see session)
        self.writer = NullMetricsWriter()
        self.log = TrainLog(self.writer, self.clock, self.spe, self._log_state)
        self._epoch_start = time.perf_counter()
        self._batches = None

    # ---- the start step and every exit ---------------------------------------------------------

    @contextlib.contextmanager
    def session(self):
        """The run's outputs for the life of the block. Entering claims the run (status "running"), writes
        its description and opens its metrics writers, inside the signal handling, so that every way out
        from here on (a signal, a refusal, a failure) is written to status.json; leaving closes the writers
        and stops the feed's workers."""
        if hasattr(self.console, "on_reader_gone"):  # cnncli.console: a broken pipe stops the run as SIGPIPE
            self.console.on_reader_gone = self.catcher.reader_gone
        try:
            with self.catcher.installed(shared=self.topology["processes"] > 1):
                self._open()
                yield self
        except TrainingInterrupted as exc:
            self._finish_status("interrupted", reason=str(exc), step=self._step_now())
            raise
        except KeyboardInterrupt as exc:  # a signal before the catcher took over, or after it let go
            interrupts.taken()
            self._finish_status("interrupted", reason=f"{signal_name(exc)}: stopped", step=self._step_now())
            raise
        except BaseException as exc:
            self._finish_status("failed", reason=errors.one_line(exc, typed=True), step=self._step_now())
            raise
        finally:
            self._in_session = False
            with contextlib.suppress(Exception):
                self.writer.close()
            if self._batches is not None:  # stops a file feed's decoding workers
                with contextlib.suppress(Exception):
                    self._batches.close()

    def _open(self) -> None:
        from cnncli.metrics import MetricsWriter, truncate_after, truncate_csv_after

        note = topology_note(self._cluster_before, self.topology)
        if note:
            self.console.print(note)
        self._in_session = True
        if not self.primary:
            return
        run = self.run_dir
        write_start_files(run, self.setup, self.console, resumed=self._resumed, start_step=self.start_step,
                          topology=self.topology)
        self._claimed = True
        run.discard_replaced()  # --force: the new run has its files; the old one goes now
        dropped = truncate_after(run.metrics_jsonl, self.start_step) + truncate_csv_after(run.metrics_csv,
                                                                                         self.start_step)
        if dropped:
            self.console.print(f"warning: dropped {dropped} unreadable line(s) of {run.metrics_jsonl.name} / "
                               f"{run.metrics_csv.name} (a torn write or damage)")
        self.writer = MetricsWriter(run.metrics_jsonl, run.metrics_csv,
                                    run.tensorboard if self.cfg.output.tensorboard else None)
        self.log = TrainLog(self.writer, self.clock, self.spe, self._log_state)

    def _step_now(self) -> int | None:
        with contextlib.suppress(Exception):
            return int(self.state.step)
        return None

    def _finish_status(self, status: str, **fields) -> None:
        with contextlib.suppress(Exception):
            self.manager.wait()
        # a run this process did not claim keeps what it said (a refused resume changes no file); a new
        # run that ends before its claim says how it ended
        if self.primary and (self._claimed or not (self.run_dir.path / "status.json").exists()):
            with contextlib.suppress(Exception):
                self.run_dir.set_status(status, wall_time_s=self.clock.wall(), **fields)

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from cnncli.distributed import bytes_per_device, place
        from cnncli.metrics import TrainProgress

        if not self._in_session:
            raise RuntimeError("Training.run() needs the run's outputs open: call it inside `with training.session():`")
        s = self.setup
        for line in opening_lines(s, self.topology):
            self.console.print(line)
        self.state = place(s.mesh, self.state, s.state_sharding)
        # the bytes of the train state on the fullest device: printed and stored under status.json's `cluster`
        self.topology.update(state_bytes_per_device=bytes_per_device(self.state), shard_params=self.t.shard_params)
        self.console.print(state_memory_line(self.topology))
        if self.primary:
            self.run_dir.set_status("running", cluster=self.topology)
        with TrainProgress(self.console, s.total_steps, self.start_step, self.spe,
                           s.total_steps / self.spe) as self.progress:
            self._batches = s.feed.batches(s.stream, self.start_step, s.total_steps)
            for step, batch in zip(range(self.start_step, s.total_steps), self._batches):
                done = self._step(step, batch)
                self._boundary(done, self.catcher.stop_requested(done))
                if self.stopped_early:
                    self.console.print(f"early stopping: no {self.t.best_metric} improvement in "
                                       f"{self.bad_evals} evaluations")
                    break
        self.catcher.urgent = True  # no step left to finish: a signal stops at once
        return self._final()

    def _boundary(self, done: int, stop: bool) -> None:
        """Everything due after step `done` (`Periodic.at`), in the one order each action needs:
        1. the train record: it closes the images/s window before the pause below, and fetches the
           epoch sums and non-finite counters the evaluation's epoch row and the NaN check read;
        2. the evaluation: it writes the epoch row and updates bad_evals and the plateau's scale;
        3. the checkpoint: its meta holds the counters after that evaluation, its metrics that score;
        4. a requested stop, after the checkpoint it will resume from.
        The throughput clock is paused across 2 and 3, once the steps dispatched so far have run."""
        import jax

        due = self.periodic.at(done, stop)
        if due.record:
            self._record(done)
        if due.pauses_training:
            jax.block_until_ready(self.state)  # the steps dispatched so far are training time
            with self.clock.paused():
                val = self._evaluate(done) if due.evaluate else None
                self._save(done, val)
        if due.stop:
            self._interrupted(done)

    def _step(self, step: int, batch) -> int:
        import jax

        if step == self.start_step:  # compiles
            t0 = time.perf_counter()
            self.state, metrics = self.setup.feed.step(self.state, batch)
            jax.block_until_ready(metrics)
            self.clock.compiled(time.perf_counter() - t0)
            if self.primary:
                self.console.print(f"first step after {self.clock.first_step_s:.1f} s "
                                   f"(compiling {self.clock.compile_s - self.clock.compile_before:.1f} s)")
        else:
            self.state, metrics = self.setup.feed.step(self.state, batch)
            self.clock.stepped(self.t.batch_size)
        self.log.add(metrics)
        self.images_seen += self.t.batch_size
        return step + 1

    def _counters(self):
        return (self.state.nonfinite_steps, self.state.first_nonfinite_step)

    def _record(self, done: int) -> None:
        self.manager.seal_finished()  # a run killed from here on leaves its newest checkpoint sealed
        vals = self.log.record(done, self._counters())
        if vals is None:
            return
        self.progress.update(done, vals)
        self._check_finite()

    def _check_finite(self) -> None:
        nonfinite, first_bad = self.log.counters
        if nonfinite > 0 and self.t.on_nonfinite == "stop":
            self.manager.wait()
            good = self.manager.latest_step()
            where = f"{self.run_dir.checkpoints / str(good)}" if good is not None \
                else "none (no checkpoint was written yet)"
            raise TrainingError(
                f"loss or gradient became NaN/Inf at step {first_bad + 1}; training stopped. "
                f"Last good checkpoint: {where}. Lower optimizer.lr or set train.on_nonfinite=skip")

    def _evaluate(self, done: int) -> dict[str, float]:
        import jax.numpy as jnp

        from cnncli.distributed import replicate

        feed, state, spe = self.setup.feed, self.state, self.spe
        val = feed.evaluate("val", state.params, state.batch_stats)
        extra = {}
        if state.ema_params is not None:
            ema_val = feed.evaluate("val", state.ema_params, state.batch_stats)
            extra = {"ema_accuracy": ema_val["accuracy"], "ema_loss": ema_val["loss"]}
        self.writer.write(done, done / spe, "val", {**val, **extra})
        if self.t.eval_test:
            self.writer.write(done, done / spe, "test", feed.evaluate("test", state.params, state.batch_stats))
        score = _metric_value(val, self.t.best_metric)
        self.bad_evals = 0 if self.manager.improves(score, self.manager.best_value()) else self.bad_evals + 1
        plateau = self.setup.plateau
        if plateau is not None:
            scale = plateau.update(_metric_value(val, self.cfg.schedule.metric))
            self.state = state.replace(lr_scale=replicate(self.setup.mesh, jnp.float32(scale)))
        row = self.log.epoch_row(done, val, epoch_time_s=time.perf_counter() - self._epoch_start,
                                 wall_time_s=self.clock.wall())
        self.progress.console.print(epoch_line(row))
        self._epoch_start = time.perf_counter()
        patience = self.t.early_stopping_patience
        if patience is not None and self.bad_evals > patience:
            self.stopped_early = True
        return val

    def _meta(self, step: int, val: dict | None) -> dict[str, Any]:
        s = self.setup
        return {"step": step, "epoch": step / self.spe, "images_seen": self.images_seen, **self.clock.state_dict(),
                "bad_evals": self.bad_evals, "plateau": s.plateau.state_dict() if s.plateau else None,
                "log": self.log.state_dict(),
                "data_position": {"seed": self.t.seed, "epoch": step // self.spe, "batch_in_epoch": step % self.spe},
                "model": s.identity, "class_names": s.data.class_names, "cluster": self.topology,
                "has_ema": self.state.ema_params is not None, "val": val}

    def _save(self, done: int, val: dict | None) -> None:
        self.log.sync(self._counters())  # the epoch sums a resume needs cover every step up to `done`
        metrics = None if val is None else {"val_accuracy": val["accuracy"], "val_loss": val["loss"]}
        self.manager.save(done, model_tree(self.state), train_tree(self.state), self._meta(done, val), metrics)

    def _interrupted(self, done: int) -> None:
        self.manager.wait()
        name = signal.Signals(self.catcher.signum).name
        raise TrainingInterrupted(
            f"{name} at step {done}: checkpoint written; resume with: cnn train --resume {self.run_dir.path}",
            self.catcher.signum)

    # ---- the end -------------------------------------------------------------------------------

    def _final(self) -> dict[str, Any]:
        from cnncli.export import export_weights
        from cnncli.distributed import replicate

        s, run = self.setup, self.run_dir
        self.manager.wait()
        best_step = self.manager.best_step()
        mtree, _, best_meta = self.manager.restore(best_step, model_tree(s.state))
        test = s.feed.evaluate("test", *replicate(s.mesh, (mtree["params"], mtree["batch_stats"])))
        results = {**test, "split": "test", "checkpoint_step": best_step}
        if self.primary:
            run.write_json("results.json", results)
        steps = int(self.state.step)
        self.writer.write(steps, steps / self.spe, "test", test)
        self.writer.close()
        export_path = None
        if self.cfg.output.export and self.primary:
            export_path = export_weights(run.path / f"model.{self.cfg.output.export}", mtree, self.cfg.output.export)
        best_val = best_meta.get("val") or {}
        best_value = _metric_value(best_val, self.t.best_metric) if best_val else None
        summary = {
            "run_dir": str(run.path), "steps": steps, "epochs": steps / self.spe,
            "best_step": best_step, "best_epoch": best_step / self.spe, f"best_{self.t.best_metric}": best_value,
            "test": results, "wall_time_s": self.clock.wall(), "compile_time_s": self.clock.compile_s,
            "first_step_s": self.clock.first_step_s, "compile_cache_hits": cache_hits(),
            "images_per_sec": self.clock.images_per_sec(),
            "checkpoints": str(run.checkpoints), "exported": str(export_path) if export_path else None,
            "stopped_early": self.stopped_early,
        }
        skipped = s.feed.corrupt_files()
        if skipped:
            summary["corrupt_files_skipped"] = len(skipped)
            self.console.print(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
        if self.primary:
            run.set_status("finished", wall_time_s=summary["wall_time_s"], best_step=best_step,
                           test_accuracy=test["accuracy"], images_per_sec=summary["images_per_sec"],
                           epochs_done=summary["epochs"], best_value=best_value, reason=None)
        return summary


def _metric_value(val: dict[str, float], metric: str) -> float:
    """val_accuracy / val_loss of an evaluation's numbers."""
    return val["accuracy"] if metric.endswith("accuracy") else val["loss"]

