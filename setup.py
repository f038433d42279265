"""Build hook for the C extensions (the Maglev population loop, the native engine); everything else is
pyproject.toml.

The native engine is optional: when it does not build, the package still installs and the python
engine runs (`sluice.dataplane.engine.AVAILABLE` is False)."""

from setuptools import Extension, setup

ENGINE_DIR = "src/sluice/dataplane/engine"
ENGINE_SOURCES = ["loop.c", "tcp.c", "udp.c", "vip.c", "counters.c", "pick.c", "proxy_header.c", "module.c"]

setup(
    ext_modules=[
        Extension("sluice.core._maglev", ["src/sluice/core/_maglev.c"], extra_compile_args=["-O2"]),
        Extension(
            "sluice.dataplane.engine._engine",
            [f"{ENGINE_DIR}/{name}" for name in ENGINE_SOURCES],
            depends=[
                f"{ENGINE_DIR}/{h}"
                for h in ("engine.h", "udp.h", "counters.h", "reasons.h", "pick.h", "proxy_header.h")
            ],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]
)
