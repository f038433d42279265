"""The OpenAPI 3.1 document of the admin API (served at /api/v1/openapi.json): every route and every
status it answers, checked against the running API by tests/control/test_api.py."""

from __future__ import annotations

import dataclasses
from typing import Any

from sluice import __version__
from sluice.control.snapshot import BackendSnapshot, ServerInfo, VipSnapshot

API = "/api/v1"
MAX_BODY_BYTES = 4096
"""Largest request body the API reads (the weight POST)."""

_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "dict[str, int]": {"type": "object", "additionalProperties": {"type": "integer"}},
    "str | None": {"type": ["string", "null"]},
    "float | None": {"type": ["number", "null"]},
    "bool | None": {"type": ["boolean", "null"]},
    "list[BackendSnapshot]": {"type": "array", "items": {"$ref": "#/components/schemas/Backend"}},
}


_STRINGS = {"type": "array", "items": {"type": "string"}}
_SETTINGS = {
    "type": "array",
    "items": {"type": "object", "properties": {"key": {"type": "string"}, "old": {}, "new": {}}},
}
_RELOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "applied", "vips", "changes", "lines", "runtime"],
    "properties": {
        "ok": {"type": "boolean"},
        "applied": {"type": "boolean", "description": "false for a dry run"},
        "vips": {**_STRINGS, "description": "the VIPs of the file read"},
        "lines": {**_STRINGS, "description": "one line per change, as the log has them"},
        "runtime": {
            **_STRINGS,
            "description": "state set at runtime (drain, maintenance, weight) this reload undoes, "
            "or keeps until a restart",
        },
        "changes": {
            "type": "object",
            "properties": {
                "vips_added": _STRINGS,
                "vips_removed": _STRINGS,
                "settings": _SETTINGS,
                "vips_changed": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "backends_added": {"type": "array", "items": {"type": "object"}},
                            "backends_removed": _STRINGS,
                            "reweighted": {"type": "array", "items": {"type": "object"}},
                            "settings": _SETTINGS,
                            "maglev_slots_moved": {"type": ["integer", "null"]},
                            "maglev_table_size": {"type": ["integer", "null"]},
                        },
                    },
                },
            },
        },
    },
}


def _schema(cls: type[Any]) -> dict[str, Any]:
    fields = dataclasses.fields(cls)
    return {
        "type": "object",
        "required": [f.name for f in fields],
        "properties": {f.name: _TYPES[str(f.type)] for f in fields},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of this API (served at /api/v1/openapi.json)."""

    def ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    error = {"$ref": "#/components/schemas/Error"}
    backend = {"$ref": "#/components/schemas/Backend"}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    addr = {
        "name": "addr",
        "in": "path",
        "required": True,
        "description": "backend address, IP:port or [IPv6]:port (URL-encoded)",
        "schema": {"type": "string"},
    }
    change_errors = {
        "400": ok(error, "a bad backend address, or an Authorization header that is not printable ASCII"),
        "401": ok(error, "missing or wrong bearer token"),
        "403": ok(error, "no token file configured and not on the Unix socket"),
        "404": ok(error, "unknown VIP or backend"),
    }

    def admin_op(summary: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}],
                "parameters": [name, addr],
                "responses": {"200": ok(backend), **change_errors},
            }
        }

    weight_op = admin_op("set the backend's runtime weight (0..65535)")
    weight_op["post"]["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["weight"],
                    "properties": {"weight": {"type": "integer", "minimum": 0, "maximum": 65535}},
                }
            }
        },
    }
    weight_op["post"]["responses"]["400"] = ok(
        error, "bad body, weight or backend address, or a non-ASCII Authorization header"
    )
    weight_op["post"]["responses"]["413"] = ok(error, f"a body over {MAX_BODY_BYTES} bytes")
    base = API + "/vips/{name}/backends/{addr}"
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "sluice admin API", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Vip": _schema(VipSnapshot),
                "Backend": _schema(BackendSnapshot),
                "Server": _schema(ServerInfo),
                "Reload": _RELOAD_SCHEMA,
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            },
        },
        "paths": {
            API + "/vips": {
                "get": {
                    "summary": "every VIP with its backends and counters",
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "properties": {
                                    "vips": {"type": "array", "items": {"$ref": "#/components/schemas/Vip"}}
                                },
                            }
                        )
                    },
                }
            },
            API + "/vips/{name}": {
                "get": {
                    "summary": "one VIP",
                    "parameters": [name],
                    "responses": {"200": ok({"$ref": "#/components/schemas/Vip"}), "404": ok(error)},
                }
            },
            API + "/vips/{name}/backends": {
                "get": {
                    "summary": "the backends of one VIP",
                    "parameters": [name],
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "properties": {"backends": {"type": "array", "items": backend}},
                            }
                        ),
                        "404": ok(error),
                    },
                }
            },
            base + "/drain": admin_op("no new flows; established ones continue up to drain_timeout"),
            base + "/undrain": admin_op("back to active"),
            base + "/maintenance": admin_op(
                "maintenance: no new flows, established ones end at drain_timeout"
            ),
            base + "/weight": weight_op,
            API + "/reload": {
                "post": {
                    "summary": "re-read the config file and apply the difference (dry_run: only tell it)",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "dry_run",
                            "in": "query",
                            "required": False,
                            "description": "true: read, validate and return the difference; apply nothing",
                            "schema": {"type": "boolean", "default": False},
                        }
                    ],
                    "responses": {
                        "200": ok({"$ref": "#/components/schemas/Reload"}),
                        "400": ok(
                            {
                                "type": "object",
                                "properties": {"errors": {"type": "array", "items": {"type": "string"}}},
                            },
                            "invalid config (or a bad dry_run, or a non-ASCII Authorization header); the running config stays",
                        ),
                        **{k: v for k, v in change_errors.items() if k not in ("400", "404")},
                        "500": ok(
                            {
                                "type": "object",
                                "properties": {"errors": {"type": "array", "items": {"type": "string"}}},
                            },
                            "the file is valid but applying it failed",
                        ),
                        "501": ok(error, "this server has no config file to reload"),
                    },
                }
            },
            API + "/server": {
                "get": {
                    "summary": "version, start time, uptime and the last reload",
                    "responses": {"200": ok({"$ref": "#/components/schemas/Server"})},
                }
            },
            API + "/openapi.json": {
                "get": {"summary": "this document", "responses": {"200": ok({"type": "object"})}}
            },
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": ok({"type": "object"})}}},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "text exposition format"},
                        "404": ok(error, "this server has no metrics registry"),
                    },
                }
            },
        },
    }
    busy = ok(error, "too many admin connections, or descriptors kept for the data plane (retry later)")
    for operations in document["paths"].values():
        for operation in operations.values():
            operation["responses"]["503"] = busy
    return document
