"""cnncli.atomic: a file is replaced whole or not at all, with a new file's usual mode and no temporary left."""

import os
import stat

import pytest

from cnncli.atomic import atomic_path, leftover_temps, write_bytes_atomic, write_text_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_gets_the_umask_mode_not_0600(tmp_path, umask_027):
    """mkstemp's temporaries are 0600; a new file written here gets 0666 less the umask, as open() gives."""
    target = tmp_path / "a.json"
    write_text_atomic(target, '{"x": 1}\n')
    assert target.read_text() == '{"x": 1}\n' and _mode(target) == 0o640
    with atomic_path(tmp_path / "b.bin") as tmp:
        assert _mode(tmp) == 0o640
        tmp.write_bytes(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01" and _mode(tmp_path / "b.bin") == 0o640
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "c.txt", "é")
    finally:
        os.umask(old)
    assert (tmp_path / "c.txt").read_bytes() == "é".encode() and _mode(tmp_path / "c.txt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.txt"]


def test_replacing_keeps_nothing_of_the_old_file(tmp_path):
    target = tmp_path / "status.json"
    target.write_text("x" * 1000)
    write_text_atomic(target, "short")
    assert target.read_text() == "short"
    write_bytes_atomic(target, b"")
    assert target.read_bytes() == b"" and [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), ValueError("bad"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_the_old_file_whole_and_no_temporary(tmp_path, exc):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old weights")
    seen = []
    with pytest.raises(type(exc)):
        with atomic_path(target) as tmp:
            seen.append(tmp)
            tmp.write_bytes(b"half of the new")
            raise exc
    assert target.read_bytes() == b"old weights"
    assert not seen[0].exists() and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_a_writer_that_fails_part_way_leaves_the_old_text(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_temporary_is_hidden_beside_the_target_and_never_shared(tmp_path):
    target = tmp_path / "results.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        for tmp in (first, second):
            assert tmp.name.startswith(".results.json.tmp-") and tmp.is_file() and tmp.stat().st_size == 0
        assert leftover_temps(tmp_path) == sorted([first, second])
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1" and leftover_temps(tmp_path) == []  # the last to finish (the outer) wins


def test_leftover_temps_names_only_temporaries(tmp_path):
    (tmp_path / ".a.json.tmp-12-ab").write_text("")
    (tmp_path / "a.json").write_text("")
    (tmp_path / ".lock").write_text("")
    (tmp_path / "pack.tmp-0123").mkdir()  # a staging folder is not a file's temporary
    assert leftover_temps(tmp_path) == [tmp_path / ".a.json.tmp-12-ab"]


def test_a_missing_folder_is_an_oserror_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_text_atomic(tmp_path / "no" / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_runs_metric_files_are_replaced_whole_not_rewritten_in_place(tmp_path):
    """Cutting metrics.jsonl / metrics.csv back to the resumed step writes new files and renames them:
    a crash in the middle leaves the old history (before: the files were truncated, then rewritten)."""
    from cnncli.metrics import CSV_COLUMNS, truncate_after, truncate_csv_after

    jsonl = tmp_path / "metrics.jsonl"
    lines = [f'{{"step": {s}, "split": "train", "loss": {s / 10}}}' for s in (1, 2, 3, 4, 5)]
    jsonl.write_text("\n".join(lines) + '\n{"step": 6, "spl')  # a torn last line
    inode = jsonl.stat().st_ino
    assert truncate_after(jsonl, 3) == 1
    assert jsonl.read_text() == "\n".join(lines[:3]) + "\n" and jsonl.stat().st_ino != inode
    csv_path = tmp_path / "metrics.csv"
    header = ",".join(CSV_COLUMNS)
    rows = [",".join([str(e), str(10 * e)] + [""] * (len(CSV_COLUMNS) - 2)) for e in (1, 2, 3)]
    csv_path.write_bytes(("\r\n".join([header, *rows]) + "\r\n").encode())
    inode = csv_path.stat().st_ino
    assert truncate_csv_after(csv_path, 20) == 0
    assert csv_path.read_bytes() == ("\r\n".join([header, *rows[:2]]) + "\r\n").encode()
    assert csv_path.stat().st_ino != inode and leftover_temps(tmp_path) == []
