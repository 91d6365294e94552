"""Repository-wide pytest setup (tests, the tutorial notebooks run by nbmake, the package's doctests).

The models in tests and notebooks are tiny; multi-threaded torch only adds contention on CI's two
cores, so every process (including notebook kernels, which inherit the environment) uses one thread.

``--doctest-modules`` imports every module of ``captum_ext`` to collect its examples; a module that
runs a program when executed (``__main__.py``) is never imported that way.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

collect_ignore_glob = ["captum_ext/**/__main__.py", "captum_ext/__main__.py"]
