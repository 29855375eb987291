"""`python -m tests.skewed_clock MODULE`: run MODULE (as `python -m MODULE` would) with this
process's wall clock shifted by BAGBOT_TEST_CLOCK_SKEW seconds, like a machine whose clock is off.

time.time() and time.time_ns() are shifted before anything else is imported, so the worker, its
log timestamps and everything it computes from the wall clock see the wrong time. Monotonic clocks
are left alone (the kernel does not skew them either). No libfaketime needed.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

SKEW = float(os.environ.get("BAGBOT_TEST_CLOCK_SKEW", "0"))
_real_time, _real_time_ns = time.time, time.time_ns


def _skewed_time() -> float:
    return _real_time() + SKEW


def _skewed_time_ns() -> int:
    return _real_time_ns() + int(SKEW * 1e9)


time.time = _skewed_time
time.time_ns = _skewed_time_ns

if __name__ == "__main__":
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
