"""Build hook for the one C extension (the Maglev population loop); everything else is pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sluice.core._maglev", ["src/sluice/core/_maglev.c"], extra_compile_args=["-O2"])])
