"""The install hint: an accelerator that jax does not use is named with the extra that brings its plugin."""

import os
import stat

import pytest
from typer.testing import CliRunner

from cnncli import accelerators
from cnncli.cli.app import app

runner = CliRunner()


def _fake_nvidia_smi(folder, gpus=("NVIDIA H200",), driver="580.159.04", rc=0):
    """An `nvidia-smi` that answers -L and the driver query as the real one does."""
    listing = "\n".join(f"GPU {i}: {name} (UUID: GPU-{i:08d}-aaaa)" for i, name in enumerate(gpus))
    script = folder / "nvidia-smi"
    script.write_text(f"""#!/bin/sh
case "$1" in
  -L) printf '%s\\n' "{listing}"; exit {rc};;
  --query-gpu=driver_version) printf '%s\\n' "{driver}"; exit {rc};;
esac
exit 9
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture
def gpu_box(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # jax on the CPU, also where the suite runs on a GPU
    monkeypatch.setattr(accelerators, "cuda_plugins", lambda: [])  # no plugin, also where the suite runs on a GPU
    return tmp_path


def test_gpu_listed_but_cpu_running_names_the_extra(gpu_box):
    line = accelerators.hint("cpu", {})
    assert line.startswith("warning: 1 NVIDIA GPU (NVIDIA H200) visible to nvidia-smi, but jax runs on the CPU")
    assert "pip install 'cnncli[cuda13]'" in line and "\n" not in line


def test_older_driver_gets_cuda12_and_several_gpus_are_counted(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, gpus=("NVIDIA A100-SXM4-80GB",) * 4, driver="535.104.05")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(accelerators, "cuda_plugins", lambda: [])
    line = accelerators.hint("cpu", {})
    assert "4 NVIDIA GPUs (NVIDIA A100-SXM4-80GB)" in line and "cnncli[cuda12]" in line


def test_an_installed_plugin_that_did_not_start_is_not_told_to_install_itself(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, driver="535.104.05")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(accelerators, "cuda_plugins", lambda: ["jax-cuda13-plugin"])
    line = accelerators.hint("cpu", {})
    assert line.startswith("warning: 1 NVIDIA GPU (NVIDIA H200) visible to nvidia-smi and jax-cuda13-plugin "
                           "installed, but the plugin did not start and jax runs on the CPU: the driver (R535) "
                           "is older than the R580 that jax-cuda13-plugin needs: pip install 'cnncli[cuda12]'")
    _fake_nvidia_smi(tmp_path)  # driver 580: the plugin's reason is jax's to tell
    line = accelerators.hint("cpu", {})
    assert "did not start" in line and "JAX_PLATFORMS=cuda prints jax's reason" in line and "pip install" not in line
    monkeypatch.setattr(accelerators, "cuda_plugins", lambda: ["jax-cuda12-plugin"])
    assert "JAX_PLATFORMS=cuda prints jax's reason" in accelerators.hint("cpu", {})


def test_no_hint_when_chosen_or_running_or_absent(gpu_box, tmp_path, monkeypatch):
    assert accelerators.hint("gpu", {}) is None  # jax already runs on it
    assert accelerators.hint("cpu", {"JAX_PLATFORMS": "cpu"}) is None  # the user chose the CPU
    assert accelerators.hint("cpu", {"JAX_PLATFORMS": "cuda,cpu"}) is not None
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no nvidia-smi at all
    monkeypatch.setattr(accelerators, "tpu_devices", lambda: [])
    assert accelerators.hint("cpu", {}) is None


def test_failing_nvidia_smi_is_no_gpu(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, rc=9)  # e.g. "NVIDIA-SMI has failed because it couldn't communicate with the driver"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(accelerators, "tpu_devices", lambda: [])
    assert accelerators.hint("cpu", {}) is None


def test_tpu_devices_name_the_tpu_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(accelerators, "tpu_devices", lambda: ["/dev/accel0"])
    assert "pip install 'cnncli[tpu]'" in accelerators.hint("cpu", {})


@pytest.mark.parametrize("args", [["bench", "resnet20", "--steps", "0"], ["eval", "no-such-run"]])
def test_commands_print_the_hint_once_and_go_on(gpu_box, args):
    """bench and eval print the one line, then carry on to their own work (here: their own refusal)."""
    res = runner.invoke(app, args)
    lines = [ln for ln in res.output.splitlines() if "visible to nvidia-smi" in ln]
    assert len(lines) == 1 and "cnncli[cuda13]" in lines[0]
    assert res.exit_code == 2  # the command's own answer to its bad input came after the hint


def test_train_prints_the_hint_before_its_work(gpu_box, tiny_config, tmp_path):
    res = runner.invoke(app, ["train", str(tiny_config), "--run-dir", str(tmp_path / "run"), "--set",
                              "data.source=npz", "--set", f"data.path={tmp_path / 'missing.npz'}"])
    lines = [ln for ln in res.output.splitlines() if "visible to nvidia-smi" in ln]
    assert len(lines) == 1 and res.exit_code == 2 and "missing.npz" in res.output
