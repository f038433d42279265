"""Build hook for the C extensions (the Maglev population loop, the native engine); everything else is
pyproject.toml.

The native engine is optional: when it does not build, the package still installs and the python
engine runs (`sluice.dataplane.engine.AVAILABLE` is False)."""

from pathlib import Path

from setuptools import Extension, setup

ENGINE_DIR = "src/sluice/dataplane/engine"
# Every .c and .h file of the engine folder is the engine: adding a file needs no edit here.
ENGINE_SOURCES = sorted(p.name for p in Path(ENGINE_DIR).glob("*.c"))
ENGINE_HEADERS = sorted(p.name for p in Path(ENGINE_DIR).glob("*.h"))

setup(
    ext_modules=[
        Extension("sluice.core._maglev", ["src/sluice/core/_maglev.c"], extra_compile_args=["-O2"]),
        Extension(
            "sluice.dataplane.engine._engine",
            [f"{ENGINE_DIR}/{name}" for name in ENGINE_SOURCES],
            depends=[f"{ENGINE_DIR}/{name}" for name in ENGINE_HEADERS],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]
)
