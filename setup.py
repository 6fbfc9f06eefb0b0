"""Build of the compiled Hamming kernels (zippy/_hamming.c); everything else is in pyproject.toml.

The extension is optional: when no C compiler is found (or it fails), the install goes on and
zippy.matching uses numba or numpy instead (``zippy.matching.backend()`` tells which runs).
"""

import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3", "-std=gnu11", "-fno-strict-aliasing"]
setup(ext_modules=[Extension("zippy._hamming", ["zippy/_hamming.c"], extra_compile_args=args, optional=True)])
