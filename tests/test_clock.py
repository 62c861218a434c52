"""The run clock's images/s against an independent count, with a fake clock."""

import json
import types

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.train import clock as clock_module
from cnncli.train.clock import Due, Every, Periodic, RunClock


class FakeTime:
    """A perf_counter that moves only when told to."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def fake_time(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(clock_module, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def test_window_rate_excludes_checkpoint_time_between_log_steps(fake_time):
    """Checkpoints every 7 steps, logs every 10: every step takes 0.5 s, every checkpoint 30 s."""
    batch, step_s, ckpt_s, steps = 32, 0.5, 30.0, 40
    log_every, ckpt_every = Every(10, steps), Every(7, steps)
    clock = RunClock()
    fake_time.now += 5.0  # the first, compiling step
    clock.compiled(5.0)
    rates, timed_images = [], 0
    for done in range(2, steps + 1):  # the loop's order: step, log record, then evaluate/checkpoint
        fake_time.now += step_s
        clock.stepped(batch)
        timed_images += batch
        if log_every(done):
            rates.append((done, clock.window_rate()))
        if ckpt_every(done):
            clock.pause()
            fake_time.now += ckpt_s
            clock.resume()
    # an independent count: every timed step is 32 images in 0.5 s
    assert rates == [(10, 64.0), (20, 64.0), (30, 64.0), (40, 64.0)]
    assert clock.steady_images == timed_images == batch * (steps - 1)
    assert clock.steady_seconds == pytest.approx(step_s * (steps - 1))
    assert clock.images_per_sec() == pytest.approx(64.0)
    assert clock.state_dict()["steady"] == {"images": timed_images, "seconds": pytest.approx(step_s * (steps - 1))}


def test_window_paused_at_a_log_step_and_resumed_rates_only_later_steps(fake_time):
    clock = RunClock({"steady": {"images": 100, "seconds": 4.0}})  # a resumed run's earlier figure
    assert clock.window_rate() is None  # no window before the first step
    clock.compiled(3.0)
    clock.pause()
    fake_time.now += 50.0  # an evaluation right after the compiling step
    clock.resume()
    assert clock.window_rate() is None  # nothing timed yet: no rate, nothing added
    for _ in range(3):
        fake_time.now += 2.0
        clock.stepped(10)
    clock.pause()
    fake_time.now += 7.0
    clock.pause()  # a second pause changes nothing
    clock.resume()
    fake_time.now += 1.0
    clock.stepped(10)
    assert clock.window_rate() == pytest.approx(40 / 7.0)
    assert (clock.steady_images, clock.steady_seconds) == (140, pytest.approx(11.0))
    assert clock.images_per_sec() == pytest.approx(140 / 11.0)


def test_periodic_owes_a_record_before_every_evaluation_and_a_checkpoint_after_it():
    """Logs every 5 steps, evaluates every 4, checkpoints every 3, over 12 steps; a signal at step 7."""
    rule = Periodic(log=Every(5, 12), evaluate=Every(4, 12), checkpoint=Every(3, 12))
    due = {done: rule.at(done, stop=done == 7) for done in range(1, 13)}
    # independently: the multiples, plus what each action needs (and the last step does everything)
    for done, d in due.items():
        evaluate = done % 4 == 0 or done == 12
        stop = done == 7
        assert d == Due(record=done % 5 == 0 or evaluate or stop, evaluate=evaluate,
                        checkpoint=done % 3 == 0 or evaluate or stop, stop=stop), done
    assert [d for d, x in due.items() if x.pauses_training] == [3, 4, 6, 7, 8, 9, 12]
    assert [d for d, x in due.items() if x.record] == [4, 5, 7, 8, 10, 12]
    assert [d for d, x in due.items() if not any(vars(x).values())] == [1, 2, 11]


def test_paused_block_is_not_training_time(fake_time):
    clock = RunClock()
    clock.compiled(1.0)
    fake_time.now += 2.0
    clock.stepped(8)
    with clock.paused():
        fake_time.now += 30.0
    fake_time.now += 2.0
    clock.stepped(8)
    with pytest.raises(KeyError), clock.paused():  # resumed however the block ends
        fake_time.now += 30.0
        raise KeyError("x")
    assert clock.window_rate() == pytest.approx(16 / 4.0)


@pytest.mark.slow
def test_logged_and_final_images_per_sec_of_a_training_with_checkpoints_between_logs(
        tiny_config, tmp_path, monkeypatch, fake_time):
    """A real (tiny) training whose steps take 1 fake second each and whose checkpoints 100 s:
    every logged rate and the run's steady figure are the batch size per second exactly."""
    from cnncli.train import loop

    step, save = loop.Training._step, loop.Training._save

    def timed_step(self, *args):
        fake_time.now += 1.0
        return step(self, *args)

    def slow_save(self, *args):
        fake_time.now += 100.0
        return save(self, *args)

    monkeypatch.setattr(loop.Training, "_step", timed_step)
    monkeypatch.setattr(loop.Training, "_save", slow_save)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(tiny_config), "--run-dir", str(run), "--set", "train.steps=12",
                                   "--set", "train.log_every_steps=5", "--set", "train.checkpoint_every_steps=3",
                                   "--set", "train.eval_every_steps=100"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [(r["step"], r["images_per_sec"]) for r in train] == [(5, 32.0), (10, 32.0), (12, 32.0)]
    status = json.loads((run / "status.json").read_text())
    assert status["images_per_sec"] == 32.0
