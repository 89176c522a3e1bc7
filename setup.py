"""Builds the Cython hot loops in ext/*.pyx into semcache._* extension modules.

Each native module has a pure-Python twin in semcache/; see semcache/_speedups.py.
"""

from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
extensions = [
    Extension(
        f"semcache.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=[np.get_include()],
        extra_compile_args=["-O3"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted((HERE / "ext").glob("*.pyx"))
]

setup(ext_modules=cythonize(extensions, language_level=3, quiet=True))
