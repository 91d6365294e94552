"""Repository-wide pytest setup (tests and the tutorial notebooks run by nbmake).

The models in tests and notebooks are tiny; multi-threaded torch only adds contention on CI's two
cores, so every process (including notebook kernels, which inherit the environment) uses one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
