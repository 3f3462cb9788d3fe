"""How busy the machine was with other work while a measurement ran.

The project's machines are shared; a figure taken while another process held a core is not
comparable, so every measurement reports beside it the load of other processes and the
time the hypervisor stole for other guests.
"""

from __future__ import annotations

import os
import resource
import time
from typing import NamedTuple


class LoadSample(NamedTuple):
    wall: float
    machine_busy: float  # CPU seconds used by everything on the machine
    steal: float  # CPU seconds the hypervisor gave to other guests while we wanted them
    ours: float  # CPU seconds used by this process and its finished children


def sample() -> LoadSample:
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        steal = fields[7] / ticks if len(fields) > 7 else 0.0
        busy = (sum(fields[:7]) - fields[3] - fields[4]) / ticks  # without idle and iowait
    except OSError:
        busy = steal = float("nan")
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return LoadSample(time.perf_counter(), busy, steal, ours)


def foreign_cores(before: LoadSample, after: LoadSample) -> float:
    """Average number of cores other processes kept busy between two samples."""
    wall = max(after.wall - before.wall, 1e-9)
    other = (after.machine_busy - before.machine_busy) - (after.ours - before.ours)
    return max(0.0, other / wall)


def stolen_cores(before: LoadSample, after: LoadSample) -> float:
    """Average number of cores the hypervisor took away (steal time) between two samples: on
    a shared VM the figures measured meanwhile are slower than the machine can do."""
    wall = max(after.wall - before.wall, 1e-9)
    return max(0.0, (after.steal - before.steal) / wall)


def describe(before: LoadSample, after: LoadSample) -> str:
    return (
        f"foreign load {foreign_cores(before, after):.2f} cores, "
        f"stolen {stolen_cores(before, after):.2f} cores"
    )


def wait_until_quiet(max_seconds: float = 60.0, threshold: float = 0.05) -> float:
    """Wait until other processes and other guests use under `threshold` cores over a 2 s
    window (e.g. a peer engine's worker processes exiting); returns the last load seen."""
    deadline = time.perf_counter() + max_seconds
    while True:
        before = sample()
        time.sleep(2.0)
        after = sample()
        load = foreign_cores(before, after) + stolen_cores(before, after)
        if load < threshold or time.perf_counter() > deadline:
            return load


def process_cpu(pid: int) -> float:
    """CPU seconds a running process has used so far (user + system)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds this process has used so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime
