"""What a packager and an operator get: the license, `sluice --version`, the page's files in the
package data, and the hardened systemd unit (contrib/sluice.service) checked by systemd-analyze."""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sluice
from sluice import cli
from sluice.dataplane.xdp import build, loader
from tests.support.privileged import needs

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
UNIT = ROOT / "contrib" / "sluice.service"
DROP_IN = ROOT / "contrib" / "sluice.service.d" / "systemd-before-253.conf"
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
"""sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (also Debian's common-licenses/Apache-2.0)."""
DSR_CAPABILITIES = {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"}


def test_license_is_the_apache_2_0_text() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256
    assert b"Apache License\n                           Version 2.0, January 2004" in text


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sluice", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sluice {PYPROJECT['project']['version']}"
    assert sluice.__version__ == PYPROJECT["project"]["version"]


def test_package_data_ships_the_status_page() -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["sluice"]
    package = ROOT / "src" / "sluice"
    files = [p.relative_to(package).as_posix() for p in (package / "control" / "static").iterdir()]
    assert "control/static/index.html" in files and "control/static/app.js" in files
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert unshipped == []


# ---------------------------------------------------------------- the systemd unit


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _systemd_version() -> int:
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def _installable_unit(directory: Path, drop_in: bool) -> Path:
    """The unit as an operator installs it: ExecStart pointing at this environment's sluice."""
    executable = Path(sys.executable).parent / "sluice"
    if not executable.exists():
        executable = Path(shutil.which("sluice") or "sluice")
    assert executable.exists(), "the sluice entry point is not installed"
    directory.mkdir()
    unit = directory / "sluice.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/sluice", str(executable)))
    if drop_in:
        (directory / "sluice.service.d").mkdir()
        shutil.copy(DROP_IN, directory / "sluice.service.d" / DROP_IN.name)
    return unit


def _verify(unit: Path) -> list[str]:
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert result.returncode == 0, result.stderr
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_unit_verifies(tmp_path: Path) -> None:
    needs(commands=("systemd-analyze",))
    version = _systemd_version()
    messages = _verify(_installable_unit(tmp_path / "plain", drop_in=False))
    if version >= 253:
        assert messages == []
    else:  # the only complaint of an older systemd is the type it does not know; the drop-in fixes it
        assert len(messages) == 1 and "notify-reload" in messages[0], messages
        with_drop_in = _verify(_installable_unit(tmp_path / "old", drop_in=True))
        assert len(with_drop_in) <= 1 and all("notify-reload" in m for m in with_drop_in), with_drop_in
    assert _directives(DROP_IN.read_text())["Type"] == ["notify"]


def test_unit_security_exposure_below_5(tmp_path: Path) -> None:
    needs(commands=("systemd-analyze",))
    unit = _installable_unit(tmp_path / "unit", drop_in=False)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=49", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    score = re.search(r"Overall exposure level for sluice\.service: (\d+\.\d)", result.stdout)
    assert score, result.stdout + result.stderr
    assert result.returncode == 0 and float(score.group(1)) < 5.0, result.stdout[-2000:]
    print(f"\nsystemd-analyze security: {score.group(1)}")


def test_unit_matches_what_sluice_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit and the code agree: notify protocol, capabilities, cache and pin directories."""
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify-reload"] and d["NotifyAccess"] == ["main"]  # control/systemd.py
    assert "ExecReload" not in d  # notify-reload sends SIGHUP itself; sluice answers RELOADING=1/READY=1
    # root's uid (the BPF filesystem is root's, mode 0700) with only these capabilities: no
    # CAP_SYS_ADMIN, no CAP_DAC_OVERRIDE
    assert "User" not in d and "DynamicUser" not in d and d["NoNewPrivileges"] == ["yes"]
    assert set(d["CapabilityBoundingSet"][0].split()) == DSR_CAPABILITIES
    assert "AmbientCapabilities" not in d  # root's uid gets the bounding set
    # the compiled BPF goes to CacheDirectory through SLUICE_CACHE_DIR (dataplane/xdp/build.py)
    assert d["CacheDirectory"] == ["sluice"] and "SLUICE_CACHE_DIR=%C/sluice" in d["Environment"]
    monkeypatch.setenv("SLUICE_CACHE_DIR", "/var/cache/sluice")
    assert build.default_cache_dir() == Path("/var/cache/sluice")
    assert d["StateDirectory"] == ["sluice"]
    # the pinned maps (dataplane/xdp/loader.py) live in the one writable place of /sys
    assert d["ReadWritePaths"] == [f"-{loader.BPFFS}"] and loader.PIN_ROOT.parent == loader.BPFFS
    assert d["ProtectSystem"] == ["strict"] and d["ProtectKernelTunables"] == ["yes"]
    # bpf() is allowed and no later deny list (e.g. ~@privileged, which holds bpf) takes it back
    assert d["SystemCallFilter"] == ["@system-service bpf"]
    families = set(d["RestrictAddressFamilies"][0].split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}


# ---------------------------------------------------------------- man page and completion


def _generate(tmp_path: Path) -> tuple[str, Path]:
    man, completion = tmp_path / "sluice.1", tmp_path / "sluice.bash"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gen-cli-docs"),
            "--man",
            str(man),
            "--bash",
            str(completion),
        ],
        check=True,
        timeout=60,
    )
    return man.read_text(), completion


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_man_page_documents_every_command_and_option(tmp_path: Path) -> None:
    needs(commands=("groff",))
    man, _ = _generate(tmp_path)
    assert man.startswith(f'.TH SLUICE 1 "" "sluice {sluice.__version__}"')
    rendered = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-u"],
        input=man,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert rendered.stderr == ""  # no roff warning
    text = rendered.stdout
    for name, sub in _commands().items():
        assert f'.SS "{name}"' in man
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
    assert "EXIT STATUS" in text and "invalid input" in text


def test_bash_completion_completes_commands_options_and_choices(tmp_path: Path) -> None:
    _, completion = _generate(tmp_path)
    subprocess.run(["bash", "-n", str(completion)], check=True, timeout=30)
    cases = {
        ("sluice", "st"): "status",
        ("sluice", "backend", "d"): "drain",
        ("sluice", "backend", "--api", "http://127.0.0.1:1", "u"): "undrain",
        ("sluice", "run", "--log-format", "j"): "json",
        ("sluice", "lab", "s"): "status",
        ("sluice", "status", "--t"): "--token-file",
    }
    script = [f"source {completion}"]
    for words in cases:
        quoted = " ".join(f"'{w}'" for w in words)
        script.append(
            f'COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=(); _sluice; echo "${{COMPREPLY[*]}}"'
        )
    out = subprocess.run(
        ["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()
    assert dict(zip(cases, out, strict=True)) == cases
    top = subprocess.run(
        [
            "bash",
            "-c",
            f"source {completion}; COMP_WORDS=(sluice ''); COMP_CWORD=1; _sluice; echo ${{COMPREPLY[*]}}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert set(_commands()) <= set(top) and "--version" in top


def test_every_python_module_is_at_most_500_lines() -> None:
    """As the engine's C files (tests/dataplane/engine/test_layout.py): a module that grows past
    this is split along a real seam."""
    over = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "src").rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert over == {}, f"split these: {over}"
