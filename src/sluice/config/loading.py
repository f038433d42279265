"""Loading: YAML -> `parse_config` (the model plus the rules across VIPs) -> a `Config`, or a
`ConfigError` listing every problem with its path."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.machinery import EXTENSION_SUFFIXES
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from sluice.config import rules
from sluice.config.messages import format_errors
from sluice.config.model import Config
from sluice.config.values import to_endpoint
from sluice.config.vip import Vip


class ConfigError(Exception):
    """The config is invalid; `errors` holds one ``path: message`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _duplicates(items: Iterable[tuple[str, str]], what: str) -> list[str]:
    """(path, key) pairs -> one error per key seen before, naming the first place."""
    first: dict[str, str] = {}
    errors = []
    for path, key in items:
        if key in first:
            errors.append(f"{path}: duplicate {what} {key} (first at {first[key]})")
        else:
            first[key] = path
    return errors


def _normal_endpoint(value: Any) -> str | None:
    try:
        return str(to_endpoint(value))
    except ValueError:
        return None  # reported by the model


def _uniqueness_errors(data: dict[str, Any]) -> list[str]:
    vips = data.get("vips")
    if not isinstance(vips, list):
        return []
    names, listens, errors = [], [], []
    for i, vip in enumerate(vips):
        if not isinstance(vip, dict):
            continue
        if isinstance(vip.get("name"), str):
            names.append((f"vips[{i}].name", vip["name"]))
        if (listen := _normal_endpoint(vip.get("listen"))) is not None:
            listens.append((f"vips[{i}].listen", f"{vip.get('protocol', 'tcp')}/{listen}"))
        backends = vip.get("backends")
        if isinstance(backends, list):
            addrs = [
                (f"vips[{i}].backends[{j}].address", a)
                for j, b in enumerate(backends)
                if isinstance(b, dict) and (a := _normal_endpoint(b.get("address"))) is not None
            ]
            errors += _duplicates(addrs, "backend address")
    return _duplicates(names, "VIP name") + _duplicates(listens, "listen address") + errors


def _announce_errors(config: Config) -> list[str]:
    """Every announced prefix must hold a dsr VIP (else it would be announced for nothing)."""
    if config.announce is None:
        return []
    dsr = [ip_address(v.listen.host) for v in config.vips if v.mode == "dsr"]
    if not dsr:
        return ["announce: needs at least one VIP with mode: dsr"]
    return [
        f"announce.prefixes[{i}]: {p} holds no dsr VIP"
        for i, p in enumerate(config.announce.prefixes or ())
        if not any(a in ip_network(p) for a in dsr)
    ]


NATIVE_ENGINE_MODULE = "sluice.dataplane.engine._engine"
"""The C extension ``engine: native`` runs on (looked up, not imported: config sits below the planes)."""


def native_engine_built() -> bool:
    """Whether the native engine's C extension is there (found, not imported)."""
    folder = Path(__file__).resolve().parents[1] / "dataplane" / "engine"  # find_spec would import it
    return any((folder / f"_engine{suffix}").is_file() for suffix in EXTENSION_SUFFIXES)


def _engine_errors(config: Config) -> list[str]:
    """``engine: native`` needs the C extension built (what `sluice run` would stop on)."""
    if config.engine != "native" or native_engine_built():
        return []
    return [
        f"engine: native needs the C extension {NATIVE_ENGINE_MODULE}, which is not built; use engine: python"
    ]


# ---------------------------------------------------------------- loading


def _valid_vips(data: dict[str, Any]) -> list[tuple[int, Vip]]:
    """The VIPs of an invalid file that are valid on their own (their value rules are reported too)."""
    vips = data.get("vips")
    out = []
    for i, raw in enumerate(vips if isinstance(vips, list) else []):
        try:
            out.append((i, Vip.model_validate(raw)))
        except ValidationError:
            continue
    return out


def parse_config(data: Any, *, duplicate_keys: list[str] | None = None) -> Config:
    """Validate a parsed YAML document; raises ConfigError listing every problem (the model's, the
    rules across keys, and `duplicate_keys` the YAML loader found)."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping with a 'vips' list"])
    errors = list(duplicate_keys or ()) + _uniqueness_errors(data) + rules.protocol_key_errors(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        valid = _valid_vips(data)
        errors = format_errors(exc, Config) + errors + rules.vip_errors(valid) + rules.attach_errors(valid)
        raise ConfigError(errors) from None
    errors += rules.config_errors(config) + _announce_errors(config) + _engine_errors(config)
    if errors:
        raise ConfigError(errors)
    return config


_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML was built with it (5-10x faster on big files), else PyYAML's."""


class _Loader(_YAML_LOADER):  # type: ignore[valid-type,misc]
    """The safe loader, noting every key a mapping gives twice (YAML would keep the last silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []
        """``line N: key `k` given twice (first on line M)``, in file order."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then a key of its own overrides on purpose
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the constructor reports it
            if first is None:
                seen[key] = line
            else:
                self.duplicates.append(f"line {line}: key `{key}` given twice (first on line {first})")
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""Largest config file read (4 MiB); a bigger file, or a device such as /dev/zero, is refused."""


def read_config_text(path: str | Path) -> str:
    """The text of a config file: at most `MAX_CONFIG_BYTES`, UTF-8; raises a path-named ConfigError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB, not read"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [f"{path}: is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line})"]
        ) from None


def parse_config_text(text: str, path: str | Path = "<config>") -> Config:
    """YAML text -> a validated `Config`; raises ConfigError (YAML errors name `path`)."""
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None
    except (ValueError, RecursionError, OverflowError) as exc:
        # PyYAML raises ValueError for an integer of more than 4300 digits, RecursionError for deep nesting.
        raise ConfigError([f"{path}: invalid YAML: {_one_line(exc)}"]) from None
    finally:
        loader.dispose()
    duplicates = [f"{path}: {line}" for line in loader.duplicates]
    try:
        return parse_config(data, duplicate_keys=duplicates)
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply"]) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises ConfigError, every message naming `path` or the
    offending key. CPU-bound on a big file: a running server calls it off its event loop."""
    return parse_config_text(read_config_text(path), path)


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (``sluice schema``): every field described by its docstring."""
    return {"$schema": JSON_SCHEMA_DIALECT, **Config.model_json_schema()}
