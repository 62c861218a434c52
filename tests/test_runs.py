"""`cnn runs`: finding run directories and summarising them; metric history of a run."""

import json

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.errors import RunDirError
from cnncli.runs import find_runs, list_runs, metric_series, read_records, summarize_run
from tests.test_evaluate import trained_tiny_run

runner = CliRunner()


def make_run(path, *, model="resnet20", dataset="digits", status=None, records=(), results=None, csv_rows=None):
    """A hand-written run directory with exactly the files the loop writes."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model:\n  name: {model}\ndata:\n  source: {dataset}\n")
    if status is not None:
        (path / "status.json").write_text(json.dumps(status))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if results is not None:
        (path / "results.json").write_text(json.dumps(results))
    if csv_rows is not None:
        header = "epoch,step,train_loss,wall_time_s\n"
        (path / "metrics.csv").write_text(header + "".join(f"{e},{s},{loss},{w}\n" for e, s, loss, w in csv_rows))
    return path


def rec(step, epoch, split, **values):
    return {"step": step, "epoch": epoch, "split": split, **values}


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "finished", model="plain20",
             status={"status": "finished", "model": "plain20", "dataset": "digits", "wall_time_s": 125.0,
                     "images_per_sec": 900.0, "epochs_done": 2.0, "test_accuracy": 0.9, "best_value": 0.8},
             records=[rec(10, 1.0, "train", loss=1.0, accuracy=0.5, images_per_sec=800.0),
                      rec(10, 1.0, "val", loss=0.9, accuracy=0.8),
                      rec(20, 2.0, "val", loss=0.8, accuracy=0.75),
                      rec(20, 2.0, "test", loss=0.7, accuracy=0.9)],
             results={"accuracy": 0.91})
    make_run(root / "group" / "live", model="resnet56",
             status={"status": "running", "model": "resnet56", "dataset": "digits"},
             records=[rec(5, 0.5, "train", loss=2.0, accuracy=0.2, images_per_sec=100.0),
                      rec(10, 1.0, "train", loss=1.5, accuracy=0.3, images_per_sec=300.0),
                      rec(10, 1.0, "val", loss=1.4, accuracy=0.35)],
             csv_rows=[(1.0, 10, 1.75, 42.5)])
    make_run(root / "stopped", status={"status": "interrupted", "step": 3},
             records=[rec(3, 0.3, "train", loss=2.2, accuracy=0.1)])
    make_run(root / "broken", status={"status": "failed", "reason": "non-finite loss at step 2"})
    make_run(root / "nostatus")
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("x")
    (root / "config_only").mkdir()
    (root / "config_only" / "config.yaml").write_text("model: {}\n")
    return root


def test_find_runs_walks_groups_and_skips_non_runs(runs_root):
    names = [p.relative_to(runs_root).as_posix() for p in find_runs(runs_root)]
    assert names == ["broken", "finished", "group/live", "nostatus", "stopped"]
    assert find_runs(runs_root / "finished") == [runs_root / "finished"]
    with pytest.raises(RunDirError, match="no such directory"):
        find_runs(runs_root / "absent")


def test_summaries_of_every_status(runs_root):
    rows = {r["name"]: r for r in list_runs(runs_root)}
    f = rows["finished"]
    assert (f["model"], f["dataset"], f["status"]) == ("plain20", "digits", "finished")
    assert f["epochs_done"] == 2.0 and f["wall_time_s"] == 125.0 and f["images_per_sec"] == 900.0
    assert f["best_val_accuracy"] == 0.8  # the highest val accuracy, not the last
    assert f["test_accuracy"] == 0.91  # results.json wins over status.json
    live = rows["group/live"]
    assert (live["status"], live["model"]) == ("running", "resnet56")
    assert live["epochs_done"] == 1.0 and live["best_val_accuracy"] == 0.35
    assert live["wall_time_s"] == 42.5  # so far, from metrics.csv
    assert live["images_per_sec"] == 300.0  # the latest training record
    assert live["test_accuracy"] is None and live["updated"] is not None
    assert rows["stopped"]["status"] == "interrupted" and rows["stopped"]["epochs_done"] == 0.3
    assert rows["broken"]["status"] == "failed" and rows["broken"]["epochs_done"] is None
    assert rows["nostatus"]["status"] == "unknown"


def test_sorting_puts_missing_values_last(runs_root):
    by_val = [r["name"] for r in list_runs(runs_root, sort="best_val_accuracy", reverse=True)]
    assert by_val[:2] == ["finished", "group/live"]
    assert set(by_val[2:]) == {"broken", "nostatus", "stopped"}
    by_val_up = [r["name"] for r in list_runs(runs_root, sort="best_val_accuracy")]
    assert by_val_up[:2] == ["group/live", "finished"]
    assert [r["name"] for r in list_runs(runs_root, sort="status")][:2] == ["broken", "finished"]
    with pytest.raises(RunDirError, match="--sort must be one of"):
        list_runs(runs_root, sort="speed")


def test_records_are_deduplicated_and_torn_lines_skipped(tmp_path):
    run = make_run(tmp_path / "r", records=[rec(1, 0.1, "train", loss=3.0, accuracy=0.1),
                                            rec(2, 0.2, "train", loss=2.0, accuracy=0.3),
                                            rec(2, 0.2, "train", loss=2.0, accuracy=0.3),
                                            rec(2, 0.2, "val", loss=2.5, accuracy=0.25, error=0.75)])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "epoch": 0.3, "spl')  # a process killed mid-write
    records = read_records(run)
    assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (2, "train"), (2, "val")]
    series = metric_series(records)
    assert series["train_loss"]["value"].tolist() == [3.0, 2.0]
    assert series["train_error"]["value"].tolist() == pytest.approx([0.9, 0.7])
    assert series["train_loss"]["epoch"].tolist() == [0.1, 0.2]
    assert series["val_error"]["value"].tolist() == [0.75]


def test_a_real_run(tmp_path_factory):
    run = trained_tiny_run(tmp_path_factory)
    row = summarize_run(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run / "results.json").read_text())
    status = json.loads((run / "status.json").read_text())
    assert row["status"] == "finished" and row["model"] == "resnet20" and row["dataset"] == "digits"
    assert row["best_val_accuracy"] == max(r["accuracy"] for r in records if r["split"] == "val")
    assert row["test_accuracy"] == results["accuracy"]
    assert row["epochs_done"] == pytest.approx(8 / status["steps_per_epoch"])

    res = runner.invoke(app, ["runs", str(run.parent), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == [{**row, "name": "run"}]
    res = runner.invoke(app, ["runs", str(run.parent)])
    assert res.exit_code == 0 and "resnet20" in res.stdout and "finished" in res.stdout


def test_cli_errors_and_empty(tmp_path):
    res = runner.invoke(app, ["runs", str(tmp_path / "absent")])
    assert res.exit_code == 2 and res.stderr.startswith("error: no such directory")
    res = runner.invoke(app, ["runs", str(tmp_path), "--sort", "speed"])
    assert res.exit_code == 2 and "--sort must be one of" in res.stderr
    res = runner.invoke(app, ["runs", str(tmp_path)])
    assert res.exit_code == 0 and "no runs under" in res.stdout


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00 not text", b"[1, 2", b'{"status": ["running"], "model": {"a": 1}}',
                                     b'"finished"', b'{"status": "exploded", "epochs_done": "many"}'])
def test_a_garbage_status_json_shows_the_run_as_unreadable(runs_root, garbage):
    (runs_root / "finished" / "status.json").write_bytes(garbage)
    rows = {r["name"]: r for r in list_runs(runs_root)}
    f = rows["finished"]
    assert (f["status"], f["model"], f["test_accuracy"]) == ("unreadable", "plain20", 0.91)
    assert f["epochs_done"] == 2.0  # from metrics.jsonl, as for a run without an end
    res = runner.invoke(app, ["runs", str(runs_root)])
    assert res.exit_code == 0 and "unreadable" in res.stdout, res.output
    res = runner.invoke(app, ["runs", str(runs_root), "--sort", "status", "--format", "json"])
    assert res.exit_code == 0 and res.exception is None, res.output


def test_a_fifo_in_place_of_a_runs_files_does_not_hang_runs(runs_root):
    import os

    for name in ("status.json", "results.json", "metrics.jsonl", "metrics.csv", ".lock"):
        target = runs_root / "group" / "live" / name
        if target.exists():
            target.unlink()
        os.mkfifo(target)
    rows = {r["name"]: r for r in list_runs(runs_root)}  # would block in open() on the old code
    live = rows["group/live"]
    assert live["status"] == "unreadable" and live["epochs_done"] is None and live["model"] == "resnet56"
    (runs_root / "finished" / "config.yaml").unlink()
    os.mkfifo(runs_root / "finished" / "config.yaml")
    assert "finished" not in {r["name"] for r in list_runs(runs_root)}  # no config file: no run


def test_records_with_garbage_fields_are_skipped_and_counted(tmp_path):
    from cnncli.runs import read_records_counted

    run = make_run(tmp_path / "r", records=[rec(1, 0.1, "train", loss=3.0), rec(2, 0.2, "train", loss=2.0)])
    with (run / "metrics.jsonl").open("a") as f:
        for line in ('{"step": "abc", "split": "train"}', '{"step": null, "split": "val"}', "[1, 2]",
                     '{"step": 3.5, "split": "train"}', '{"step": 1e400, "split": "train"}', '{"step": 4, "split": 7}',
                     "\xff garbage", "", '{"step": 3, "epoch": 0.3, "split": "train", "loss": 1.0}'):
            f.write(line + "\n")
    records, bad = read_records_counted(run)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert bad == 7
    res = runner.invoke(app, ["plot", str(run), "--metric", "train_loss", "-o", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("warning") == 1 and f"7 in {run / 'metrics.jsonl'}" in res.stderr
