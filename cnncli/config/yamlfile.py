"""Reading YAML safely: duplicate keys refused, alias expansion and file size bounded, one-line errors;
`--set key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cnncli import regular_file
from cnncli.errors import ConfigError, one_line

from cnncli.config.validate import _clip, _show


# ----------------------------------------------------------------------------- loading


MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB
MAX_YAML_VALUES = 100_000  # values after expanding aliases: refuses "billion laughs" documents


class YamlRefused(Exception):
    """A YAML document the config loader will not build (duplicate keys, alias bombs, deep nesting)."""


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and integers too long to convert."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Called once per mapping before `<<` merges are spliced in: the explicit keys are all here.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise YamlRefused(f"duplicate key {_show(key)} at lines {seen[key]} and {line}")
                seen[key] = line
        super().flatten_mapping(node)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise YamlRefused(f"integer too long at line {node.start_mark.line + 1}") from None


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)


def _expanded_size(root: yaml.Node) -> int:
    """The number of values `root` holds once aliases are expanded; refuses cycles and alias bombs."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise YamlRefused(f"a YAML alias at line {node.start_mark.line + 1} is recursive (contains itself)")
        open_nodes.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                raise YamlRefused(f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values; "
                                  "a config needs a few hundred")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def parse_yaml(text: str | bytes) -> Any:
    """One YAML document, loaded safely and bounded. Raises yaml.YAMLError or YamlRefused."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except RecursionError:
        raise YamlRefused("the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], parsed YAML value)."""
    shown = _show(text)
    if "=" not in text:
        raise ConfigError(f"--set {shown}: expected KEY=VALUE, e.g. --set optimizer.lr=0.05")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {shown}: the key is empty")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except YamlRefused as exc:
        raise ConfigError(f"--set {shown}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `key=value` overrides to a raw config mapping (validated later)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {_show(text)}: '{_clip(part)}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping, turning every failure into a one-line ConfigError."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, expected a YAML file: {path}")
    try:
        data = regular_file.read_bytes(path, ConfigError, "config file", limit=MAX_CONFIG_BYTES)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a config file is a few kB")
        raw = parse_yaml(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise ConfigError(f"{path}: invalid YAML{line}: {_clip(problem, 200)}") from None
    except YamlRefused as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, ...)")
    return raw
