"""TensorFlow's oneDNN CPU kernels on every x86 CPU, not only the newest (every stage asks for them
first; they are here because training steps are what they pay for).

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it loads. Left unset, it turns oneDNN on only
where the CPU has AVX-512 VNNI, AVX-512 BF16, AVX-VNNI or AMX, and runs its Eigen kernels on other
CPUs, AVX2-only ones such as the project's AMD EPYC. There, one default train step on held batches
took 0.66-0.67 s with oneDNN against 0.88-0.90 s without; in TensorFlow's profiler the
convolutions' backprop (40 % of the Eigen step's op time) took 1.8x less CPU (docs/performance.md,
"oneDNN kernels"). A value the user set wins; `make bench` (section 7) times the other setting beside
it on each machine.
"""
from __future__ import annotations

import os
import sys

ENV = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> bool:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 unless it is set already; call it before TensorFlow is imported
    (afterwards TensorFlow no longer reads it: RuntimeError). True if the value asks for oneDNN."""
    if "tensorflow" in sys.modules:
        raise RuntimeError(f"{ENV} must be set before TensorFlow is imported")
    return os.environ.setdefault(ENV, "1").strip().lower() in ("1", "true")


def enabled() -> bool:
    """Whether the TensorFlow loaded in this process runs oneDNN kernels."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
