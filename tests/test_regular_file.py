"""Files a user names, and a run's own files, are read only when they are regular files."""

import os

import pytest

from cnncli import regular_file
from cnncli.config import load_config
from cnncli.errors import ConfigError, RunDirError


def test_a_fifo_or_a_device_as_the_config_is_one_line_not_a_hang(tmp_path):
    fifo = tmp_path / "exp.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"^config file .*exp.yaml is a FIFO \(named pipe\), not a regular file$"):
        load_config(fifo)  # the old code waited in open() for a writer
    with pytest.raises(ConfigError, match=r"^config file /dev/zero is a character device, not a regular file$"):
        load_config("/dev/zero")


def test_read_bytes_checks_the_descriptor_it_reads(tmp_path):
    p = tmp_path / "a.json"
    p.write_bytes(b"0123456789")
    assert regular_file.read_bytes(p) == b"0123456789"
    assert regular_file.read_bytes(p, limit=3) == b"0123"  # limit + 1: the caller can tell "too long"
    assert regular_file.read_text(p) == "0123456789"
    with pytest.raises(RunDirError, match="is a directory, not a regular file"):
        regular_file.read_bytes(tmp_path, RunDirError)
    with pytest.raises(FileNotFoundError):
        regular_file.read_bytes(tmp_path / "absent")
    link = tmp_path / "link"
    link.symlink_to(p)
    assert regular_file.read_bytes(link) == b"0123456789" and regular_file.not_regular(link) is None
    assert regular_file.not_regular(tmp_path / "absent") is None
