"""Build glue for the one compiled module; everything else is in pyproject.toml.

`oca.http._head` (the compiled fast paths, oca/http/_head.c) needs only a
C compiler and the Python headers. An editable install (`pip install -e .`,
as .ci/setup runs it) builds it in place next to its source. It is
optional: where it cannot be built the install still succeeds and the
server runs the pure-Python path, as with OCA_PURE=1 (oca.http.speedups),
and says so in /health. CI cannot pass that way: tests/unit/test_fast_head.py
imports the module, and the server tests expect /health to say "compiled".
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("oca.http._head", ["oca/http/_head.c"], extra_compile_args=["-O2", "-Wall"], optional=True)])
