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
    with pytest.raises(ConfigError, match="'train.batch_size' must be a positive integer"):
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
