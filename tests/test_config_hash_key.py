"""The ``hash_key:`` field of a VIP: 32 hex digits, quoted; refused with a message that never repeats
the value; dumped as ``<secret>``; only for the Maglev scheduler."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sluice.config import ConfigError, config_json_schema, parse_config
from sluice.core.flow import HashKey

SECRET = "3c5e7a9b1d2f40618293a4b5c6d7e8f9"


def config(**vip: Any) -> dict[str, Any]:
    spec = {"name": "web", "listen": "127.0.0.1:8080", "backends": [{"address": "127.0.0.1:9001"}], **vip}
    return {"vips": [spec]}


def test_a_quoted_key_is_parsed_and_never_dumped() -> None:
    text = f'vips:\n  - name: web\n    listen: 127.0.0.1:8080\n    hash_key: "{SECRET}"\n    backends: [{{address: 127.0.0.1:9001}}]\n'
    vip = parse_config(yaml.safe_load(text)).vips[0]
    assert vip.hash_key == HashKey.from_hex(SECRET)
    assert vip.model_dump()["hash_key"] == vip.model_dump(mode="json")["hash_key"] == "<secret>"
    for shown in (repr(vip), str(vip), vip.model_dump_json()):
        assert SECRET not in shown.lower()
    assert parse_config(config()).vips[0].hash_key is None  # unset: unkeyed


def test_the_schema_says_what_a_key_looks_like() -> None:
    field = config_json_schema()["$defs"]["Vip"]["properties"]["hash_key"]
    assert {"type": "string", "pattern": "^[0-9A-Fa-f]{32}$", "writeOnly": True} in field["anyOf"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (SECRET[:-1], "vips[0].hash_key: expected 32 hex digits"),
        (SECRET + "a", "vips[0].hash_key: expected 32 hex digits"),
        (SECRET[:-1] + "z", "vips[0].hash_key: expected 32 hex digits"),
        ("0" * 32, "vips[0].hash_key: a hash key of zeros is no secret"),
        (int("9" * 32), "vips[0].hash_key: expected a string of 32 hex digits, got int (quote the key"),
        ([SECRET], "vips[0].hash_key: expected a string of 32 hex digits, got list"),
    ],
    ids=["short", "long", "not-hex", "zeros", "bare-digits", "list"],
)
def test_a_bad_key_is_refused_without_repeating_it(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config(hash_key=value))
    text = "\n".join(err.value.errors)
    assert text.startswith(message), text
    assert str(value).strip("[]'")[:20] not in text


def test_a_key_needs_the_maglev_scheduler() -> None:
    with pytest.raises(ConfigError, match="hash_key keys Maglev's flow hash; scheduler least_conn"):
        parse_config(config(hash_key=SECRET, scheduler="least_conn"))
