"""End to end: health checks of dsr VIPs go through the VIP (dataplane/xdp/checkpath.py). Root only.

The lab (src/sluice/lab/dsr.py) with checks on: an http check of the web VIP and a dns check of the
dns VIP, on every backend. Removing the VIP from one backend's lo (the classic DSR outage: the
backend still answers on its own address) takes it down after exactly `fall` failed checks, and its
new flows follow the Maglev table of the others; putting it back brings it up after `rise` checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.dataplane.xdp.checkpath import RULE_PREF
from sluice.lab import dsr
from sluice.lab.dsr import CHECK_TIMING, VIP, DsrLab, LbProcess
from sluice.lab.netns import LabError
from tests.netns.test_xdp_lab import owner
from tests.support.privileged import needs

pytestmark = pytest.mark.timeout(180)

KEYS = [f"{vip}/{dsr.backend_ip(i)}:{port}" for vip, port in (("web", 80), ("dns", 53)) for i in range(3)]


@pytest.fixture(params=["l2", "ipip"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DsrLab]:
    needs(root=True, commands=("clang", "ip", "tc", "taskset"))
    lab = DsrLab.create(request.param, tmp_path)
    try:
        lab.start_backends()
        yield lab
    finally:
        lab.destroy()


def wait_states(
    lb: LbProcess, wanted: dict[str, str], timeout_s: float = 30.0, min_ok: int = 0
) -> dict[str, Any]:
    """Poll the LB's health until every key of `wanted` is in its state and has passed at least
    `min_ok` checks (bounded); the last health. Backends start up before any check, so a test that
    counts checks from here waits for `min_ok=1`: a backend's first check, when it fails, takes it
    down at once (whatever `fall`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = lb.health()
        states = {k: health["backends"][k]["state"] for k in wanted}
        if states == wanted and all(health["backends"][k]["ok"] >= min_ok for k in wanted):
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"states {states}, expected {wanted}")
        time.sleep(0.1)


def first_event(health: dict[str, Any], key: str, state: str, after: int) -> dict[str, Any]:
    """The first transition of `key` into `state` among the events from index `after` on."""
    return next(e for e in health["events"][after:] if e["backend"] == key and e["state"] == state)


def lb_setup(lab: DsrLab) -> dict[str, str]:
    """What sluice installed in the LB namespace: rules at its priority, clsact filters, qdiscs."""
    lb = lab.ns("lb")
    return {
        "rules": lb.run("ip", "rule", "show", "pref", str(RULE_PREF)).stdout.strip(),
        "egress": lb.run("tc", "filter", "show", "dev", "eth0", "egress").stdout.strip(),
        "qdisc": "clsact" if "clsact" in lb.run("tc", "qdisc", "show", "dev", "eth0").stdout else "",
    }


def routes(lab: DsrLab) -> list[str]:
    """The LB namespace's routes in every table, but the IPv6 link-local ones the kernel adds by itself
    when an interface's fe80:: address has passed duplicate address detection (at any moment)."""
    table = lab.ns("lb").run("ip", "route", "show", "table", "all").stdout
    return [ln for ln in table.splitlines() if "fe80::" not in ln]


def test_a_backend_without_the_vip_goes_down_and_its_flows_move(lab: DsrLab) -> None:
    fall, rise = int(CHECK_TIMING["fall"]), int(CHECK_TIMING["rise"])
    before = routes(lab)
    lb = lab.start_lb(lab.write_config("checked", checks=True), checks=True)
    try:
        health = wait_states(lb, dict.fromkeys(KEYS, "up"), min_ok=1)
        for key in KEYS:  # checked on the VIP, each backend with its own mark
            assert health["backends"][key]["target"].startswith(VIP)
        assert len({health["backends"][k]["mark"] for k in KEYS}) == 3
        passed = lb.counters()["global"]["pass_not_vip"]
        assert passed > 0  # the replies (VIP -> the LB's address) passed the XDP program
        encap = health["check_encap"]
        if lab.forwarding == "ipip":  # every check left encapsulated
            assert encap["encapsulated"] > 0 and encap["failed"] == 0
        else:
            assert encap == {}

        # b2 loses the VIP: down after exactly `fall` failed checks, per VIP
        b2 = [k for k in KEYS if dsr.backend_ip(1) in k]
        at_removal = {k: health["backends"][k]["failed"] for k in b2}
        mark = len(health["events"])
        lab.set_vip_on_lo(1, present=False)
        health = wait_states(lb, dict.fromkeys(KEYS, "up") | dict.fromkeys(b2, "down"))
        for k in b2:
            assert first_event(health, k, "down", mark)["failed"] - at_removal[k] == fall
        # its new flows go to the others, as Maglev over b1 and b3 says
        http = lab.http_burst(48000, 24)
        assert http == {p: owner(lab, [0, 2], "web", p) for p in http}
        assert "b2" not in http.values() and "b2" in {owner(lab, None, "web", p) for p in http}
        dns_answers = lab.dns_burst(48100, 12)
        assert dns_answers == {p: owner(lab, [0, 2], "dns", p) for p in dns_answers}

        # the VIP comes back: up after `rise` good checks, and b2 takes its flows again
        at_return = {k: health["backends"][k]["ok"] for k in b2}
        mark = len(health["events"])
        lab.set_vip_on_lo(1, present=True)
        health = wait_states(lb, dict.fromkeys(KEYS, "up"))
        for k in b2:
            assert first_event(health, k, "up", mark)["ok"] - at_return[k] == rise
        http = lab.http_burst(48200, 24)
        assert http == {p: owner(lab, None, "web", p) for p in http}

        # a crash leaves the rules (and the tc program) in place; a restart converges on them
        installed = lb_setup(lab)
        assert len(installed["rules"].splitlines()) == 3
        assert bool(installed["egress"]) == (lab.forwarding == "ipip")
        lb.kill()
        assert lb_setup(lab) == installed
        lb = lab.start_lb(lab.write_config("checked", checks=True), checks=True)
        wait_states(lb, dict.fromkeys(KEYS, "up"))
        assert lb_setup(lab)["rules"] == installed["rules"]
    finally:
        lb.quit()
    # a clean stop removes everything it set up
    assert lb_setup(lab) == {"rules": "", "egress": "", "qdisc": ""}
    assert routes(lab) == before


def test_a_vip_held_by_the_lb_itself_is_refused(tmp_path: Path) -> None:
    """The local table wins over the check rules: a VIP on the LB's lo would answer its own checks."""
    needs(root=True, commands=("clang", "ip", "tc", "taskset"))
    lab = DsrLab.create("l2", tmp_path, backends=1)
    try:
        lab.ns("lb").run("ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        with pytest.raises(LabError, match=f"VIP {VIP} is a local address of this node"):
            lab.start_lb(lab.write_config("checked", [0], checks=True), checks=True)
    finally:
        lab.destroy()
