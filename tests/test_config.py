import dataclasses
import typing

import pytest

from cnncli.config import Config, load_config
from cnncli.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_defaults_file_and_overrides_in_order(tmp_path):
    p = write(tmp_path, "optimizer:\n  lr: 0.2\ntrain:\n  epochs: 3\n")
    cfg = load_config(p, ["optimizer.lr=0.05", "train.batch_size=32", "schedule.milestones=[2, 4]"])
    assert cfg.optimizer.lr == 0.05  # CLI beats file
    assert cfg.train.epochs == 3.0  # file beats default
    assert cfg.optimizer.momentum == 0.9  # default
    assert cfg.train.batch_size == 32
    assert cfg.schedule.milestones == [2.0, 4.0]
    assert isinstance(cfg.train.epochs, float)


def test_shipped_config_is_valid():
    cfg = load_config("configs/digits_resnet20.yaml")
    assert cfg.model.name == "resnet20" and cfg.data.source == "digits"


def test_unknown_key_names_path_file_and_suggestion(tmp_path):
    p = write(tmp_path, "optimizer:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "'optimizer.lrr'" in msg and "'optimizer.lr'" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'.*'train'"):
        load_config(write(tmp_path, "trian:\n  epochs: 1\n"))


def test_wrong_type_names_key_type_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"'optimizer.lr' must be number, got 'fast' \(str\)"):
        load_config(write(tmp_path, "optimizer:\n  lr: fast\n"))
    with pytest.raises(ConfigError, match="'train.batch_size' must be integer"):
        load_config(write(tmp_path, "train:\n  batch_size: 12.5\n"))


def test_bad_choice_suggests(tmp_path):
    with pytest.raises(ConfigError, match="'optimizer.name' must be one of.*did you mean 'adam'"):
        load_config(write(tmp_path, "optimizer:\n  name: adan\n"))


def test_invalid_yaml_reports_line(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML at line 3"):
        load_config(write(tmp_path, "model:\n  name: resnet20\n  bad: a: b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_errors(tmp_path):
    p = write(tmp_path, "")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(p, ["optimizer.lr"])
    with pytest.raises(ConfigError, match="unknown key 'optimizer.momentun'"):
        load_config(p, ["optimizer.momentun=0.5"])
    with pytest.raises(ConfigError, match=r"'train.batch_size' must be an integer in \[1, 1048576\], got 0"):
        load_config(p, ["train.batch_size=0"])


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  name: vgg11\n"), ["train.steps=5"])
    again = load_config(write(tmp_path, cfg.to_yaml()))
    assert again == cfg
    assert Config() != cfg


def test_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML parses `1e-4` as a string; numbers written that way are common in configs
    cfg = load_config(write(tmp_path, "optimizer:\n  weight_decay: 1e-4\n"), ["optimizer.lr=5e-2"])
    assert cfg.optimizer.weight_decay == 1e-4 and cfg.optimizer.lr == 0.05
    with pytest.raises(ConfigError, match="'optimizer.lr' must be number"):
        load_config(write(tmp_path, "optimizer:\n  lr: 1e-4x\n"))


# ----------------------------------------------------------------------------- ranges


def refused(tmp_path, text, overrides=None):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), overrides)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


BAD_VALUES = [
    # (yaml, key named in the message, range text in the message)
    ("train:\n  eval_every_epochs: .nan\n", "'train.eval_every_epochs'", "finite number in (0, 100000], got nan"),
    ("optimizer:\n  lr: " + "9" * 400 + "\n", "'optimizer.lr'", "finite number in (0, 1e+30], got inf"),
    ("train:\n  epochs: .inf\n", "'train.epochs'", "finite"),
    ("train:\n  checkpoint_every_epochs: -.inf\n", "'train.checkpoint_every_epochs'", "finite"),
    ("optimizer:\n  lr: 1e999\n", "'optimizer.lr'", "finite"),
    ("data:\n  mean: [0.5, .nan, 0.5]\n", "'data.mean[1]'", "finite"),
    ("train:\n  seed: -1\n", "'train.seed'", "in [0, 4294967295]"),
    ("train:\n  seed: 4294967296\n", "'train.seed'", "in [0, 4294967295]"),
    ("data:\n  split_seed: -3\n", "'data.split_seed'", "in [0, 4294967295]"),
    ("data:\n  num_classes: 0\n", "'data.num_classes'", "in [1, "),
    ("data:\n  num_train: 0\n", "'data.num_train'", "in [1, "),
    ("data:\n  num_test: -5\n", "'data.num_test'", "in [1, "),
    ("data:\n  image_size: 1000000\n", "'data.image_size'", "in [1, 4096]"),
    ("data:\n  image_size: 0\n", "'data.image_size'", "in [1, 4096]"),
    ("model:\n  input_size: 5000\n", "'model.input_size'", "in [1, 4096]"),
    ("model:\n  in_channels: 2\n", "'model.in_channels'", "one of 1, 3"),
    ("model:\n  num_classes: 0\n", "'model.num_classes'", "in [1, "),
    ("model:\n  width: 1000\n", "'model.width'", "in (0, 64]"),
    ("model:\n  bn_epsilon: 0\n", "'model.bn_epsilon'", "in (0, 1]"),
    ("optimizer:\n  clip_grad_norm: -1.0\n", "'optimizer.clip_grad_norm'", "> 0"),
    ("optimizer:\n  clip_grad_norm: 0\n", "'optimizer.clip_grad_norm'", "> 0"),
    ("optimizer:\n  eps: 0\n", "'optimizer.eps'", "in (0, 1]"),
    ("optimizer:\n  b1: 1.0\n", "'optimizer.b1'", "in [0, 1)"),
    ("optimizer:\n  b2: -0.1\n", "'optimizer.b2'", "in [0, 1)"),
    ("optimizer:\n  decay: 1\n", "'optimizer.decay'", "in [0, 1)"),
    ("schedule:\n  gamma: 0\n", "'schedule.gamma'", "> 0"),
    ("schedule:\n  final_lr: -0.1\n", "'schedule.final_lr'", "in [0, 1e+30]"),
    ("schedule:\n  warmup_epochs: -1\n", "'schedule.warmup_epochs'", "in [0, "),
    ("schedule:\n  warmup_steps: -1\n", "'schedule.warmup_steps'", "in [0, "),
    ("schedule:\n  name: step\n  milestones: [30, -60]\n", "'schedule.milestones[1]'", "in [0, "),
    ("schedule:\n  milestone_steps: [-1]\n", "'schedule.milestone_steps[0]'", "in [0, "),
    ("schedule:\n  power: 0\n", "'schedule.power'", "> 0"),
    ("schedule:\n  factor: 1.0\n", "'schedule.factor'", "in (0, 1)"),
    ("schedule:\n  patience: -1\n", "'schedule.patience'", "in [0, "),
    ("schedule:\n  min_lr: -1\n", "'schedule.min_lr'", "in [0, 1e+30]"),
    ("schedule:\n  threshold: -0.1\n", "'schedule.threshold'", "in [0, 1)"),
    ("train:\n  eval_every_epochs: 0\n", "'train.eval_every_epochs'", "in (0, "),
    ("train:\n  eval_every_steps: 0\n", "'train.eval_every_steps'", "in [1, "),
    ("train:\n  checkpoint_every_steps: -4\n", "'train.checkpoint_every_steps'", "in [1, "),
    ("train:\n  keep_best: 0\n", "'train.keep_best'", "in [1, "),
    ("train:\n  keep_last: 0\n", "'train.keep_last'", "in [1, "),
    ("train:\n  eval_batch_size: 0\n", "'train.eval_batch_size'", "in [1, "),
    ("train:\n  early_stopping_patience: -1\n", "'train.early_stopping_patience'", "in [0, "),
    ("train:\n  steps: 1000000000000000000000000000000\n", "'train.steps'", "in [1, 1000000000]"),
    ("train:\n  epochs: 1.0e+30\n", "'train.epochs'", "in (0, "),
    ("train:\n  batch_size: 100000000\n", "'train.batch_size'", "in [1, "),
    ("data:\n  num_workers: -1\n", "'data.num_workers'", "in [0, "),
    ("data:\n  augment:\n    random_crop_padding: -2\n", "'data.augment.random_crop_padding'", "in [0, "),
    ("data:\n  augment:\n    scale: [0.5, 1.5]\n", "'data.augment.scale[1]'", "in (0, 1]"),
    ("data:\n  augment:\n    scale: [0, 1]\n", "'data.augment.scale[0]'", "in (0, 1]"),
    ("data:\n  augment:\n    scale: [0.9, 0.1]\n", "'data.augment.scale'", "increasing"),
    ("data:\n  augment:\n    scale: [0.5]\n", "'data.augment.scale'", "2 numbers"),
    ("data:\n  augment:\n    ratio: [-1, 2]\n", "'data.augment.ratio[0]'", "in (0, 100]"),
    ("data:\n  augment:\n    ratio: [2, 1, 3]\n", "'data.augment.ratio'", "2 numbers"),
    ("data:\n  std: [0.2, 0, 0.2]\n", "'data.std[1]'", "> 0"),
]


@pytest.mark.parametrize("text, key, what", BAD_VALUES, ids=[k + "=" + t.split(":")[-1].strip() for t, k, _ in BAD_VALUES])
def test_out_of_range_values_are_refused_naming_file_key_value_and_range(tmp_path, text, key, what):
    msg = refused(tmp_path, text)
    assert str(tmp_path / "exp.yaml") in msg and key in msg and what in msg, msg
    assert "got " in msg


def test_integer_fields_refuse_booleans_and_huge_floats(tmp_path):
    assert "must be integer, got True (bool)" in refused(tmp_path, "train:\n  seed: true\n")
    assert "'train.steps' must be integer or null, got 1e+30 (float)" in refused(tmp_path, "train:\n  steps: 1.0e+30\n")
    assert "'optimizer.lr' must be number, got False (bool)" in refused(tmp_path, "optimizer:\n  lr: false\n")
    # an exact float is still an integer
    assert load_config(write(tmp_path, "train:\n  steps: 100.0\n")).train.steps == 100


def test_every_numeric_field_declares_a_range_its_default_satisfies():
    from cnncli.config import config_from_dict

    checked = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif {int, float} & _leaf_types(tp):
                assert "range" in f.metadata or "choices" in f.metadata, f"{prefix}{f.name} declares no range"
                checked.append(prefix + f.name)

    walk(Config, "")
    assert len(checked) == 61, checked  # every numeric key of every section, counted by hand
    assert config_from_dict({}) == Config()  # the defaults pass the checks a file gets


def _leaf_types(tp):
    args = typing.get_args(tp)
    if not args:
        return {tp}
    return set().union(*(_leaf_types(a) for a in args))


def test_boundary_values_are_accepted(tmp_path):
    cfg = load_config(write(tmp_path, (
        "model:\n  input_size: 4096\n  num_classes: 1\n  in_channels: 3\n"
        "data:\n  image_size: 4096\n  split_seed: 4294967295\n  num_classes: 1\n"
        "  augment:\n    scale: [1.0, 1.0]\n    ratio: [0.5, 0.5]\n    random_crop_padding: 0\n"
        "optimizer:\n  b1: 0\n  clip_grad_norm: 1.0e-3\n"
        "schedule:\n  warmup_epochs: 0\n  milestones: [0, 2]\n  final_lr: 0\n"
        "train:\n  seed: 0\n  steps: 1000000000\n  keep_best: 1\n  early_stopping_patience: 0\n"
    )))
    assert cfg.data.split_seed == 4294967295 and cfg.train.steps == 10**9
    assert cfg.data.augment.scale == [1.0, 1.0] and cfg.optimizer.clip_grad_norm == 1e-3


def test_overrides_get_the_same_range_checks(tmp_path):
    p = write(tmp_path, "")
    for override, key in [("optimizer.clip_grad_norm=-1", "'optimizer.clip_grad_norm'"),
                          ("train.eval_every_epochs=.nan", "'train.eval_every_epochs'"),
                          ("train.seed=-1", "'train.seed'"), ("data.image_size=1e6", "'data.image_size'"),
                          ("data.augment.scale=[0.9,0.1]", "'data.augment.scale'")]:
        with pytest.raises(ConfigError) as e:
            load_config(p, [override])
        assert key in str(e.value) and "--set" in str(e.value), str(e.value)


# ----------------------------------------------------------------------------- YAML loader


def test_duplicate_keys_are_refused_naming_key_and_both_lines(tmp_path):
    msg = refused(tmp_path, "train:\n  epochs: 3\nmodel:\n  name: vgg11\ntrain:\n  steps: 5\n")
    assert "duplicate key 'train'" in msg and "lines 1 and 5" in msg
    msg = refused(tmp_path, "optimizer:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    assert "duplicate key 'lr'" in msg and "lines 2 and 4" in msg
    msg = refused(tmp_path, "optimizer: {lr: 0.1, lr: 0.2}\n")
    assert "duplicate key 'lr'" in msg and "lines 1 and 1" in msg
    with pytest.raises(ConfigError, match="--set.*duplicate key 'lr'"):
        load_config(write(tmp_path, ""), ["optimizer={lr: 0.1, lr: 0.2}"])


def test_merge_keys_are_not_duplicates(tmp_path):
    cfg = load_config(write(tmp_path, (
        "model: &m\n  name: vgg11\n  width: 0.5\n"
        "schedule:\n  milestones: &ms [1, 2]\n  name: step\n"
        "data:\n  augment:\n    <<: {flip: true, random_crop_padding: 2}\n    random_crop_padding: 4\n"
    )))
    assert cfg.data.augment.random_crop_padding == 4 and cfg.data.augment.flip is True
    assert cfg.schedule.milestones == [1.0, 2.0]


def bomb(levels):
    """A flow list whose last item expands to 10**levels 'lol's (the "billion laughs" with levels=9)."""
    names = "abcdefghi"[:levels]
    items = ["&a [" + ", ".join(["lol"] * 10) + "]"]
    items += [f"&{c} [" + ", ".join([f"*{p}"] * 10) + "]" for p, c in zip(names, names[1:])]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("where", ["model:\n  name: {}\n", "data:\n  mean: {}\n", "train: {}\n",
                                   "optimizer:\n  lr: {}\n"])
def test_alias_bomb_is_refused_in_one_line(tmp_path, where):
    # 10**9 leaves once expanded; the loader must refuse it before anything walks or prints it
    msg = refused(tmp_path, where.format(bomb(9)))
    assert "aliases" in msg and len(msg) < 300


def test_recursive_alias_is_refused(tmp_path):
    assert "recursive" in refused(tmp_path, "data:\n  mean: &a [1, *a]\n")


def test_values_in_messages_are_truncated(tmp_path):
    # 10**4 leaves: under the loader's bound, so the type check meets it and must not print it whole
    msg = refused(tmp_path, "data:\n  mean: " + bomb(4) + "\n")
    assert "'data.mean" in msg and "..." in msg and len(msg) < 300
    msg = refused(tmp_path, "optimizer:\n  name: " + "adam" * 10000 + "\n")
    assert "'optimizer.name' must be one of" in msg and "..." in msg and len(msg) < 400
    msg = refused(tmp_path, "model:\n  " + "k" * 1000 + ": 1\n")  # YAML keys are at most 1024 long
    assert "unknown key" in msg and len(msg) < 400
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, ""), ["optimizer.lr" + "x" * 10000 + "=1"])
    assert len(str(e.value)) < 400


def test_oversized_or_pathological_files_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)
    assert "integer too long at line 2" in refused(tmp_path, "train:\n  steps: " + "9" * 5000 + "\n")
    msg = refused(tmp_path, "data:\n  mean: " + "[" * 100000 + "]" * 100000 + "\n")
    assert "nested" in msg


# ----------------------------------------------------------------------------- the CLI


def test_cli_refuses_a_bad_config_in_one_line_and_creates_no_run_directory(tmp_path):
    from typer.testing import CliRunner

    from cnncli.cli import app

    root = tmp_path / "runs"
    cases = ["train:\n  eval_every_epochs: .nan\n", "train:\n  epochs: .inf\n",
             "optimizer:\n  clip_grad_norm: -1\n", "data:\n  image_size: 1000000\n",
             "train:\n  steps: 5\ntrain:\n  steps: 6\n"]
    for text in cases:
        p = write(tmp_path, f"output:\n  root: {root}\n" + text)
        res = CliRunner().invoke(app, ["train", str(p)])
        assert res.exit_code == 2, (text, res.output)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
        assert not root.exists()
    p = write(tmp_path, f"output:\n  root: {root}\n")
    res = CliRunner().invoke(app, ["train", str(p), "--set", "data.num_classes=0", "--run-dir", str(root / "r")])
    assert res.exit_code == 2 and "'data.num_classes'" in res.stderr and not root.exists()


def test_shipped_configs_all_load():
    from pathlib import Path

    paths = sorted(Path("configs").glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        load_config(path)
