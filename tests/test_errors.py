"""cnncli.errors.one_line: every message about an exception says it in one line, the same way."""

import pickle

import pytest

from cnncli.errors import CheckpointError, DataError, one_line


@pytest.mark.parametrize(("exc", "plain", "typed"), [
    (ValueError("first line\nsecond line"), "first line", "ValueError: first line"),
    (ValueError("\n\n   indented first  \nnext"), "indented first", "ValueError: indented first"),
    (ValueError(), "ValueError", "ValueError"),
    (RuntimeError("   \n  "), "RuntimeError", "RuntimeError"),
    (OSError(28, "No space left on device", "/run/x.json"), "No space left on device",
     "OSError: [Errno 28] No space left on device: '/run/x.json'"),
    (PermissionError(13, "Permission denied"), "Permission denied", "PermissionError: [Errno 13] Permission denied"),
    (OSError("a message without an errno\nmore"), "a message without an errno",
     "OSError: a message without an errno"),
    (CheckpointError("no checkpoint in runs/a\n(details)"), "no checkpoint in runs/a", "no checkpoint in runs/a"),
    (KeyboardInterrupt(), "KeyboardInterrupt", "KeyboardInterrupt"),
])
def test_one_line(exc, plain, typed):
    assert one_line(exc) == plain
    assert one_line(exc, typed=True) == typed


def test_one_line_is_cut_at_its_limit():
    exc = ValueError("x" * 1000 + "\ny")
    assert one_line(exc) == "x" * 300
    assert one_line(exc, limit=200) == "x" * 200
    assert one_line(exc, typed=True, limit=20) == "ValueError: " + "x" * 8


def test_a_failure_status_names_the_type(tmp_path):
    """status.json's reason for a crash (one_line, typed) keeps an unexpected exception's type name,
    not a CnnError's: its text is already the user's message."""
    assert one_line(ZeroDivisionError("division by zero"), typed=True) == "ZeroDivisionError: division by zero"
    assert one_line(DataError("bad data\nmore"), typed=True) == "bad data"


def test_an_image_that_cannot_be_read_says_only_the_reason(tmp_path):
    """Before: "(... [Errno 13] Permission denied: '/p.png')", the path twice."""
    from cnncli.data.files import _read_failure

    err = _read_failure("/p.png", PermissionError(13, "Permission denied", "/p.png"))
    assert str(err) == "/p.png: cannot read the image (Permission denied)"


def test_a_malformed_dataset_pickle_is_one_line(tmp_path):
    """Before: the whole text of the exception, whatever its length (several lines possible)."""
    from cnncli.data.safe_pickle import load_pickle

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": [1, 2, 3]})[:-5])
    with pytest.raises(DataError) as err:
        load_pickle(path)
    assert str(err.value).startswith(f"{path}: not a readable pickle (") and "\n" not in str(err.value)



def test_a_persistent_id_in_a_dataset_pickle_is_refused(tmp_path):
    """The shared restricted unpickler refuses references outside the pickle (before: UnpicklingError)."""
    import io

    from cnncli.data.safe_pickle import load_pickle

    class _External(pickle.Pickler):
        def persistent_id(self, obj):
            return "outside" if obj == "ref" else None

    buf = io.BytesIO()
    _External(buf, protocol=2).dump({"data": "ref"})
    path = tmp_path / "data_batch_1"
    path.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"refused to unpickle: the file references a persistent object \(outside\)"):
        load_pickle(path)
