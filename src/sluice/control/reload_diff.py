"""What a reload changes: the difference between the running config and a new one, as data, as one
log line per change, and as the API's JSON. Pure (no I/O).

- VIPs added and removed (by name); for a VIP in both: backends added, removed and re-weighted (the
  file's weights), settings changed (dotted keys, old and new value), and for a VIP that uses Maglev
  before and after, the slots of its table that now name another backend, computed from the weights
  the data plane uses (the effective config: health, drain and runtime weights folded in).
- Top-level settings changed (``shutdown_timeout``, ``admin.listen``, ...), each marked when it waits
  for a restart (`RESTART_KEYS`).
- Runtime state (drain, maintenance, a weight set through the API) is reported by `runtime_notes`:
  what this reload undoes, and what it keeps but a restart of sluice would undo.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Final

from sluice.config import Config, Endpoint, Vip
from sluice.core.maglev import MaglevTable, build_table, count_slots_changed

RESTART_KEYS: Final = ("admin", "announce")
"""Top-level blocks a reload does not apply: they take effect at the next restart."""


@dataclass(frozen=True)
class SettingChange:
    key: str
    """Dotted path, e.g. ``timeouts.idle`` or ``health.interval``."""
    old: Any
    new: Any

    def text(self) -> str:
        return f"{self.key} {_value(self.old)} -> {_value(self.new)}"


@dataclass(frozen=True)
class VipChange:
    """How one VIP present before and after differs."""

    name: str
    backends_added: tuple[tuple[str, int], ...] = ()
    """(address, weight)."""
    backends_removed: tuple[str, ...] = ()
    reweighted: tuple[tuple[str, int, int], ...] = ()
    """(address, old weight, new weight): the file's weights."""
    settings: tuple[SettingChange, ...] = ()
    slots_moved: int | None = None
    """Maglev slots whose backend changes (None: not Maglev before and after)."""
    table_size: int | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.backends_added
            or self.backends_removed
            or self.reweighted
            or self.settings
            or self.slots_moved
        )


@dataclass(frozen=True)
class ReloadDiff:
    vips_added: tuple[str, ...] = ()
    vips_removed: tuple[str, ...] = ()
    vips_changed: tuple[VipChange, ...] = ()
    settings: tuple[SettingChange, ...] = ()
    """Top-level keys (dotted), ``vips`` excluded."""
    added_detail: Mapping[str, str] = field(default_factory=dict)
    """VIP name -> ``tcp/127.0.0.1:80, 3 backends`` for the added ones."""

    @property
    def empty(self) -> bool:
        return not (self.vips_added or self.vips_removed or self.vips_changed or self.settings)

    def lines(self) -> list[str]:
        """One line per change, in a stable order."""
        return list(self._lines())

    def _lines(self) -> Iterator[str]:
        for name in self.vips_added:
            yield f"vip {name} added ({self.added_detail.get(name, '')})".replace(" ()", "")
        for name in self.vips_removed:
            yield f"vip {name} removed"
        for v in self.vips_changed:
            for address, weight in v.backends_added:
                yield f"vip {v.name}: backend {address} added (weight {weight})"
            for address in v.backends_removed:
                yield f"vip {v.name}: backend {address} removed"
            for address, old, new in v.reweighted:
                yield f"vip {v.name}: backend {address} weight {old} -> {new}"
            for s in v.settings:
                yield f"vip {v.name}: {s.text()}"
            if v.slots_moved and v.table_size:
                yield (
                    f"vip {v.name}: maglev {v.slots_moved} of {v.table_size} slots move to another "
                    f"backend ({100 * v.slots_moved / v.table_size:.1f}% of new flows)"
                )
        for s in self.settings:
            restart = " (takes effect at the next restart)" if s.key.split(".")[0] in RESTART_KEYS else ""
            yield f"{s.text()}{restart}"

    def to_json(self) -> dict[str, Any]:
        return {
            "vips_added": list(self.vips_added),
            "vips_removed": list(self.vips_removed),
            "vips_changed": [
                {
                    "name": v.name,
                    "backends_added": [{"address": a, "weight": w} for a, w in v.backends_added],
                    "backends_removed": list(v.backends_removed),
                    "reweighted": [{"address": a, "old": o, "new": n} for a, o, n in v.reweighted],
                    "settings": [{"key": s.key, "old": s.old, "new": s.new} for s in v.settings],
                    "maglev_slots_moved": v.slots_moved,
                    "maglev_table_size": v.table_size,
                }
                for v in self.vips_changed
            ],
            "settings": [{"key": s.key, "old": s.old, "new": s.new} for s in self.settings],
        }


def diff_configs(old: Config, new: Config, old_effective: Config, new_effective: Config) -> ReloadDiff:
    """What changes from `old` to `new` (the files); Maglev slots from the effective configs."""
    old_vips = {v.name: v for v in old.vips}
    new_vips = {v.name: v for v in new.vips}
    changed = []
    for name, vip in new_vips.items():
        if name in old_vips:
            change = _diff_vip(old_vips[name], vip, _vip(old_effective, name), _vip(new_effective, name))
            if not change.empty:
                changed.append(change)
    added = tuple(n for n in new_vips if n not in old_vips)
    return ReloadDiff(
        vips_added=added,
        vips_removed=tuple(n for n in old_vips if n not in new_vips),
        vips_changed=tuple(changed),
        settings=tuple(_settings(_dump(old, "vips"), _dump(new, "vips"))),
        added_detail={
            n: f"{new_vips[n].protocol}/{new_vips[n].listen}, {len(new_vips[n].backends)} backends"
            for n in added
        },
    )


def runtime_notes(
    new: Config,
    admin: Mapping[tuple[str, Endpoint], str],
    weights: Mapping[tuple[str, Endpoint], int],
    dropped: Set[tuple[str, Endpoint]],
) -> list[str]:
    """Lines about state set at runtime: `admin` (``drain``, ``maintenance``) and runtime `weights`
    by (VIP, backend), `dropped` the weights a reload to `new` drops (the file sets a new weight).
    Each says whether this reload undoes it, or keeps it and a restart would undo it."""
    file_weights = {(v.name, b.address): b.weight for v in new.vips for b in v.backends}
    lines = []
    for what, items in (("", admin), ("runtime weight ", weights)):
        for (vip, address), value in sorted(items.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            key, head = (vip, address), f"vip {vip}: backend {address} {what}{value} (set at runtime)"
            if key not in file_weights:
                lines.append(f"{head} ends: the reload removes the backend")
            elif what and key in dropped:
                lines.append(f"{head} ends: the file sets weight {file_weights[key]}")
            else:
                lines.append(f"{head} stays; a restart of sluice undoes it")
    return lines


def _diff_vip(old: Vip, new: Vip, old_eff: Vip | None, new_eff: Vip | None) -> VipChange:
    before = {str(b.address): b.weight for b in old.backends}
    after = {str(b.address): b.weight for b in new.backends}
    slots = size = None
    if old.scheduler == new.scheduler == "maglev" and old_eff is not None and new_eff is not None:
        size = new.maglev_table_size
        same = old_eff.maglev_table_size == size and _weights(old_eff) == _weights(new_eff)
        slots = 0 if same else count_slots_changed(_table(old_eff), _table(new_eff))  # tables only if needed
    return VipChange(
        name=new.name,
        backends_added=tuple((a, w) for a, w in after.items() if a not in before),
        backends_removed=tuple(a for a in before if a not in after),
        reweighted=tuple((a, before[a], w) for a, w in after.items() if a in before and before[a] != w),
        settings=tuple(_settings(_dump(old, "backends"), _dump(new, "backends"))),
        slots_moved=slots,
        table_size=size,
    )


def _weights(vip: Vip) -> list[tuple[str, int]]:
    return [(str(b.address), b.weight) for b in vip.backends]


def _table(vip: Vip) -> MaglevTable:
    return build_table(_weights(vip), vip.maglev_table_size)


def _vip(config: Config, name: str) -> Vip | None:
    return next((v for v in config.vips if v.name == name), None)


def _dump(model: Config | Vip, exclude: str) -> dict[str, Any]:
    dumped: dict[str, Any] = model.model_dump(mode="json", exclude={exclude})
    return dumped


def _settings(old: Any, new: Any, prefix: str = "") -> Iterator[SettingChange]:
    """Leaves that differ, as dotted keys; a block unset on one side is one change of the whole block."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            yield from _settings(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
    elif old != new:
        yield SettingChange(prefix, old, new)


def _value(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, separators=(",", ":"))
