"""Helpers, fakes and harnesses shared by several test folders (never imported by src/).

- `privileged`: `needs(root=..., commands=...)`, skip or fail under SLUICE_REQUIRE_PRIVILEGED=1.
- `fakes`: a clock, scripted health checkers, a recording data plane, config and endpoint builders.
- `loopback`: named echo backends, probe clients, held connections and load on 127.0.0.1; `free_port`.
- `admin`: a fake controller and reloader for the admin API and the CLI.
"""
