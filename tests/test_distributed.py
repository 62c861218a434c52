"""The same step on a 2-device data mesh (forced host devices) as on one device."""

import json
import os
import subprocess
import sys

import pytest


def _train(tmp_path, name, devices, tiny_config, *extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    run = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "cnncli.cli", "train", str(tiny_config), "--run-dir", str(run),
                           "--set", "train.log_every_steps=1", *extra], env=env, capture_output=True, text=True)
    return proc, run


def test_two_devices_match_one(tiny_config, tmp_path):
    one, run1 = _train(tmp_path, "one", 1, tiny_config)
    two, run2 = _train(tmp_path, "two", 2, tiny_config)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert "2 cpu device(s)" in two.stderr

    def losses(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["split"] == "train"]

    a, b = losses(run1), losses(run2)
    assert len(a) == len(b) == 8
    # the global batch (and BatchNorm over it) is the same; only float summation order differs
    assert b == pytest.approx(a, rel=2e-3)
    assert a[0] == b[0]


def test_batch_must_divide_over_devices(tiny_config, tmp_path):
    proc, _ = _train(tmp_path, "odd", 2, tiny_config, "--set", "train.batch_size=33")
    assert proc.returncode == 2
    assert "'train.batch_size' = 33 must be divisible by the number of devices (2)" in proc.stderr
