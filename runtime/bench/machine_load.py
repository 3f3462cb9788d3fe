"""How busy the machine was with other work while a measurement ran.

The project's machines are shared; a figure taken while another process held a core is not
comparable, so every measurement reports the foreign load beside it.
"""

from __future__ import annotations

import os
import resource
import time
from typing import NamedTuple


class LoadSample(NamedTuple):
    wall: float
    machine_busy: float  # CPU seconds used by everything on the machine
    ours: float  # CPU seconds used by this process and its finished children


def sample() -> LoadSample:
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / ticks  # minus idle and iowait
    except OSError:
        busy = float("nan")
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return LoadSample(time.perf_counter(), busy, ours)


def foreign_cores(before: LoadSample, after: LoadSample) -> float:
    """Average number of cores other processes kept busy between two samples."""
    wall = max(after.wall - before.wall, 1e-9)
    other = (after.machine_busy - before.machine_busy) - (after.ours - before.ours)
    return max(0.0, other / wall)


def wait_until_quiet(max_seconds: float = 60.0, threshold: float = 0.05) -> float:
    """Wait until other processes use under `threshold` cores over a 2 s window (e.g. a
    peer engine's worker processes exiting); returns the last foreign load seen."""
    deadline = time.perf_counter() + max_seconds
    while True:
        before = sample()
        time.sleep(2.0)
        load = foreign_cores(before, sample())
        if load < threshold or time.perf_counter() > deadline:
            return load
