"""Build glue for the one compiled module; everything else is in pyproject.toml.

`oca.http._head` (the request-head fast path, oca/http/_head.c) needs only
gcc and the Python headers. An editable install (`pip install -e .`, as
.ci/setup runs it) builds it in place next to its source. Without it, or
with OCA_PURE=1, the server runs the pure-Python path (oca.http.speedups).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("oca.http._head", ["oca/http/_head.c"], extra_compile_args=["-O2", "-Wall"])])
