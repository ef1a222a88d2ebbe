"""Timing helpers shared by the benchmarks.

Ours and the reference run in the same process, interleaved round by round,
so that a noisy neighbour or a change of CPU clock hits both alike; each
figure is the median over rounds.
"""
from __future__ import annotations

import platform
import statistics
import subprocess
import time

from scratchllm.backend import retain_freed_memory

# A benchmark owns its process, as the scratchllm command does: malloc keeps
# freed memory (SCRATCHLLM_MALLOC=default leaves it alone).
retain_freed_memory()


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` reports it (or the platform's guess)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def blas_info() -> str:
    """NumPy's BLAS: library, version, kernel architecture and thread count."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    import numpy  # noqa: F401  (loads NumPy's BLAS so threadpoolctl can see it)

    parts = []
    for pool in threadpool_info():
        if pool.get("user_api") != "blas" or "torch" in pool.get("filepath", ""):
            continue
        arch = pool.get("architecture")
        parts.append(f"{pool['internal_api']} {pool.get('version')}"
                     + (f" ({arch})" if arch else "") + f", {pool['num_threads']} threads")
    return "; ".join(parts) or "unknown"


def use_torch_threads(n: int = 2):
    """Import torch with ``n`` intra-op threads (the machines have 2 cores)."""
    import torch

    torch.set_num_threads(n)
    return torch


def header(torch=None) -> str:
    """Lines naming the machine and library versions, for the top of a report."""
    import os

    import numpy

    lines = [f"CPU: {cpu_model()} ({os.cpu_count()} logical cores)",
             f"NumPy {numpy.__version__}, BLAS: {blas_info()}"]
    if torch is not None:
        lines.append(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    lines.append(f"Python {platform.python_version()}")
    return "\n".join(lines)


def _cpu_jiffies():
    """(total, idle) clock ticks of all CPUs since boot, from /proc/stat (Linux)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return sum(vals), vals[3] + vals[4]


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes while the block
    runs: a benchmark on 2 cores is only meaningful when this is near 0.

        with OtherLoad() as load: ...
        load.fraction  # 0.0 .. 1.0, or None where /proc/stat is missing
    """

    def __enter__(self):
        import os

        self.fraction = None
        try:
            self._start = (_cpu_jiffies(), os.times())
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc):
        import os

        if self._start is None:
            return False
        (total0, idle0), t0 = self._start
        total1, idle1 = _cpu_jiffies()
        t1 = os.times()
        # ours: this process and the children it has waited for (runners started as subprocesses)
        ours = sum(getattr(t1, f) - getattr(t0, f) for f in ("user", "system", "children_user", "children_system"))
        ours *= os.sysconf("SC_CLK_TCK")
        total = total1 - total0
        busy = total - (idle1 - idle0)
        self.fraction = max(0.0, busy - ours) / total if total else 0.0
        return False


def interleaved(fns: dict, rounds: int = 30, number: int | None = None, warmup: int = 3,
                target_s: float = 0.01, settle_s: float = 0.0) -> dict:
    """Median seconds per call of each function in ``fns`` ({name: callable}).

    Each round calls every function ``number`` times in turn (chosen so one
    function's batch takes about ``target_s`` when not given); the time of a
    call is its batch's time divided by ``number``; the result is the median
    over ``rounds`` rounds. Before each timed batch the function runs untimed
    for ``settle_s`` seconds: when two libraries with their own thread pools
    share 2 cores, the previous one's BLAS workers keep spinning for a while
    after its last call and would be charged to the next one.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if number is None:
        slowest = 0.0
        for fn in fns.values():
            t0 = time.perf_counter()
            fn()
            slowest = max(slowest, time.perf_counter() - t0)
        number = max(1, int(target_s / max(slowest, 1e-7)))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle_s:
                t_end = time.perf_counter() + settle_s
                while time.perf_counter() < t_end:
                    fn()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - t0) / number)
    return {name: statistics.median(ts) for name, ts in times.items()}


def table(rows, headers) -> str:
    """A Markdown table from rows of already formatted cells."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    fmt = "| " + " | ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt.format(*headers), sep] + [fmt.format(*r) for r in rows])
