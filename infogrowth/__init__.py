"""InfoGrowth stream: online cleaning and selection of image-text (and labelled) samples.

The algorithm core (encode, clean, gain, sample, store) runs without Kafka; the Faust
agents in ``agents/`` are thin wiring over it.
"""

import os

__version__ = "0.1.0"

# torch's OpenMP threads spin after each parallel region by default, and between the gain
# stage's many short GEMMs they took the cores from the thread that runs the rest of the
# batch: image-text gains at 30,000 x 512 ran 2.1-2.4k/s spinning against 3.5-4.1k/s
# sleeping (2-core VM, interleaved). Read once, when OpenMP starts: before torch is imported;
# a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Likewise numpy's OpenBLAS: its helper threads spin for 2^28 cycles after each BLAS call
# before they sleep. In a pipeline worker the gain stage's within-batch GEMM woke them every
# batch and they spun on the core the event loop and the broker needed: 4.4 of the curator
# process's 11.5 CPU seconds for 12,000 samples (perf: blas_thread_server). 2^4 cycles (the
# least OpenBLAS takes): they sleep at once, and offline selection is as fast (153 against
# 163 µs/sample at 12k x 512). Read when numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
