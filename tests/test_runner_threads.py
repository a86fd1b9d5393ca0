"""`outside_this_thread`: what it runs leaves no OpenMP team behind in the calling thread.

A team left alive (a server's main thread that loaded the model) makes libgomp stop spinning at
barriers once the process holds more of its threads than cores, and llama.cpp's decode, which meets
a barrier after every operation, runs at half speed. Checked in a fresh process, where the main
thread has no team yet: a parallel matrix product in the main thread leaves a worker thread alive,
the same product through `outside_this_thread` does not.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autarky.runner import outside_this_thread

PROBE = """
import os, time, torch
from autarky.runner import outside_this_thread
torch.set_num_threads(2)
def work():
    a = torch.randn(1024, 1024)
    return float((a @ a).sum())
def threads():
    time.sleep(0.3)  # a finished thread's workers leave
    return len(os.listdir("/proc/self/task"))
before = threads()
outside_this_thread(work)
after_outside = threads()
work()
print(before, after_outside, threads())
"""


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2, reason="Linux, 2+ cores"
)
def test_work_run_outside_this_thread_leaves_no_openmp_team_here():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    before, after_outside, after_here = map(int, out.stdout.split())
    assert after_here > before, "the control did not start an OpenMP team: the probe proves nothing"
    assert after_outside == before


def test_its_result_and_its_exception_come_back():
    assert outside_this_thread(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError, match="gone"):
        outside_this_thread(lambda: {}["gone"])
