"""JAX_PLATFORMS and XLA_FLAGS that jax would fail on end in one line naming the variable, exit 2."""

import os
import subprocess
import sys

import pytest

from cnncli import backend_env
from cnncli.backend_env import platforms_problem, xla_flags_problem, xla_reason


@pytest.fixture
def no_plugins(monkeypatch):
    monkeypatch.setattr(backend_env, "_installed", lambda module: False)


@pytest.mark.parametrize("value, extra", [
    ("cuda", "pip install 'cnncli[cuda13]' (NVIDIA driver 580 or newer) or 'cnncli[cuda12]'"),
    ("gpu", "pip install 'cnncli[cuda13]' (NVIDIA driver 580 or newer) or 'cnncli[cuda12]' or jax's ROCm plugin"),
    ("tpu", "pip install 'cnncli[tpu]'"),
    ("cpu,cuda", "pip install 'cnncli[cuda13]'"),
])
def test_a_platform_without_its_plugin_names_the_extra(no_plugins, value, extra):
    reason = platforms_problem({"JAX_PLATFORMS": value})
    assert reason.startswith(f"JAX_PLATFORMS={value} asks for ") and extra in reason and "\n" not in reason


def test_platforms_that_can_start(no_plugins, monkeypatch):
    assert platforms_problem({}) is None and platforms_problem({"JAX_PLATFORMS": "cpu"}) is None
    assert platforms_problem({"JAX_PLATFORMS": ""}) is None
    assert platforms_problem({"JAX_PLATFORMS": "cdua"}) == ("JAX_PLATFORMS='cdua' names an unknown platform 'cdua'; "
                                                            "expected some of cpu, cuda, gpu, rocm, tpu, separated "
                                                            "by commas")
    # jax reads the list as it is: an empty entry, a space or upper case is a backend it does not know
    assert "names an empty entry" in platforms_problem({"JAX_PLATFORMS": "cpu,"})
    assert "names an empty entry" in platforms_problem({"JAX_PLATFORMS": ",,,"})
    assert "unknown platform 'CPU'" in platforms_problem({"JAX_PLATFORMS": "CPU"})
    assert "unknown platform 'cpu '" in platforms_problem({"JAX_PLATFORMS": "cpu "})
    monkeypatch.setattr(backend_env, "_installed", lambda module: module == "jax_cuda12_plugin")
    assert platforms_problem({"JAX_PLATFORMS": "cuda"}) is None and platforms_problem({"JAX_PLATFORMS": "gpu"}) is None


def test_xla_log_lines_lose_their_prefix():
    out = ("E1204 17:13:56.981337   21543 command_line_flags.cc:93] Couldn't interpret value maybe for flag x.\n"
           "F1204 17:13:56.981397   21543 parse_flags_from_env.cc:220] Check failed: Flag parsing failed.\nusage: ...")
    assert xla_reason(out) == "Couldn't interpret value maybe for flag x."


def test_unset_or_cnn_defaults_only_spawn_nothing(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("spawned a child"))
    assert xla_flags_problem({}) is None and xla_flags_problem({"XLA_FLAGS": "  "}) is None
    assert xla_flags_problem({"XLA_FLAGS": "--a=1"}, frozenset({"--a=1"})) is None


@pytest.mark.slow
def test_xla_judges_the_flags_once_per_value(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "cnn"))
    env = {**os.environ, "CNN_CACHE_DIR": str(tmp_path / "cnn")}
    bad = xla_flags_problem({**env, "XLA_FLAGS": "--xla_no_such_flag=1"})
    assert bad == "XLA_FLAGS='--xla_no_such_flag=1' is refused by XLA: Unknown flag in XLA_FLAGS: " \
                  "--xla_no_such_flag=1; correct or unset it"
    bad = xla_flags_problem({**env, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=maybe"})
    assert "Couldn't interpret value maybe for flag xla_cpu_multi_thread_eigen" in bad
    good = {**env, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    assert xla_flags_problem(good) is None
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("judged an accepted value again"))
    assert xla_flags_problem(good) is None


def _cnn(tmp_path, **env):
    full = {**os.environ, "CNN_CACHE_DIR": str(tmp_path / "cnn"), **env}
    return subprocess.run([sys.executable, "-m", "cnncli.cli", "summarize", "resnet20", "--no-compile"],
                          env=full, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("env, words", [
    ({"XLA_FLAGS": "--garbage_flag=1"}, "XLA_FLAGS='--garbage_flag=1' is refused by XLA: Unknown flag"),
    ({"JAX_PLATFORMS": "cuda"}, "JAX_PLATFORMS=cuda asks for the cuda platform"),
])
def test_the_command_refuses_in_one_line(tmp_path, env, words):
    if "JAX_PLATFORMS" in env and any(backend_env._installed(m) for m in backend_env.PLATFORM_PLUGINS["cuda"][0]):
        pytest.skip("a CUDA plugin is installed here")
    proc = _cnn(tmp_path, **env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and words in proc.stderr, proc.stderr


def test_a_plugin_that_cannot_start_is_one_sentence():
    from cnncli.backend_env import start_failure

    jax_text = ("Unable to initialize backend 'cuda': FAILED_PRECONDITION: No visible GPU devices. (you may need to "
                "uninstall the failing plugin package, or set JAX_PLATFORMS=cpu to skip this backend.)")
    assert start_failure(RuntimeError(jax_text)) == (
        "jax could not start its 'cuda' backend (FAILED_PRECONDITION: No visible GPU devices); JAX_PLATFORMS=cpu "
        "runs on the CPU, or uninstall jax's cuda plugin")
    assert start_failure(RuntimeError("Unable to initialize backend 'tpu': INTERNAL: no chip\n (set JAX_PLATFORMS='' "
                                      "to automatically choose an available backend)")).startswith(
        "jax could not start its 'tpu' backend (INTERNAL: no chip);")
    assert start_failure(RuntimeError("some other failure")) is None
    assert start_failure(ValueError("Unable to initialize backend 'cuda': x")) is None


@pytest.mark.slow
def test_a_plugin_that_fails_to_start_ends_the_command_in_one_line(tmp_path):
    """A jax plugin registered the way jax's CUDA plugin is, whose backend raises at start (as the CUDA
    plugin does on a machine whose GPU it cannot use): exit 2, one line, no run directory."""
    plugin = tmp_path / "plugins" / "jax_plugins" / "failing"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(
        "def initialize():\n"
        "    from jax._src import xla_bridge\n\n"
        "    def factory():\n"
        "        raise RuntimeError('FAILED_PRECONDITION: No visible GPU devices.')\n\n"
        "    xla_bridge.register_backend_factory('failing', factory, priority=400, fail_quietly=False)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'plugins'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("JAX_PLATFORMS", None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: resnet20}\ndata: {source: synthetic, num_train: 64, num_test: 16}\n"
                   "train: {epochs: 1, batch_size: 16}\n")
    for args in (["summarize", "resnet20", "--no-compile"], ["train", str(cfg), "--run-dir", str(tmp_path / "run")]):
        proc = subprocess.run([sys.executable, "-m", "cnncli.cli", *args], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip() == ("error: jax could not start its 'failing' backend (FAILED_PRECONDITION: No "
                                       "visible GPU devices); JAX_PLATFORMS=cpu runs on the CPU, or uninstall jax's "
                                       "failing plugin"), proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()
