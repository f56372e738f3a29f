"""Build the Cython accelerators in native/ into gateway._native.*.

A missing compiler is not fatal at import time: every native module has a pure-Python twin,
and `gateway doctor` reports which one is in use. The build itself requires Cython and gcc.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "gateway._native.buckets",
        ["native/buckets.pyx"],
        extra_compile_args=["-O3"],
    ),
    Extension("gateway._native.normalize", ["native/normalize.pyx"], extra_compile_args=["-O3"]),
    Extension("gateway._native.http1", ["native/http1.pyx"], extra_compile_args=["-O3"]),
    Extension("gateway._native.aes_cbc", ["native/aes_cbc.pyx"], include_dirs=["native"], extra_compile_args=["-O3"],
              depends=["native/aes_ni.h", "native/cpu_features.h"]),
    Extension("gateway._native.aes_gcm", ["native/aes_gcm.pyx"], include_dirs=["native"], extra_compile_args=["-O3"],
              depends=["native/aes_ni.h", "native/cpu_features.h"]),
    Extension("gateway._native.ratchet_kdf", ["native/ratchet_kdf.pyx"], include_dirs=["native"],
              extra_compile_args=["-O3"], depends=["native/cpu_features.h"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
