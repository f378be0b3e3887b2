"""Device and dtype selection: the only module that names a device type.

``resolve_device("auto")`` prefers CUDA, then Apple MPS, then the CPU. Everything else in the core takes its
device and dtype from tensors it is given or from :func:`resolve_device`.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import Pixel3DMMError

DEVICE_CHOICES = ("auto", "gpu", "cpu")


def gpu_available() -> bool:
    """True when a CUDA or an Apple MPS device can be used."""
    return torch.cuda.is_available() or _mps_available()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(preference: str = "auto") -> torch.device:
    """Map a user preference ("auto", "gpu", "cpu", or an explicit torch device string) to a device.

    "gpu" without a usable GPU raises :class:`Pixel3DMMError`; "auto" silently falls back to the CPU.
    """
    pref = (preference or "auto").lower()
    if pref == "cpu":
        return torch.device("cpu")
    if pref in ("auto", "gpu"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        if pref == "gpu":
            raise Pixel3DMMError("No usable GPU was found; choose the CPU or Auto device instead.")
        return torch.device("cpu")
    try:
        return torch.device(pref)
    except RuntimeError as exc:
        raise Pixel3DMMError(f"Unknown device '{preference}'; use auto, gpu or cpu.") from exc


def is_gpu(device: torch.device) -> bool:
    """True for CUDA and MPS devices."""
    return device.type in ("cuda", "mps")


def release_memory(device: torch.device) -> None:
    """Return cached GPU memory to the driver after a reconstruction."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and _mps_available():
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` is a GPU out-of-memory error (CUDA or MPS)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


#: cuBLAS products are deterministic on one stream only with a fixed workspace layout; torch refuses (or, with
#: warn_only, warns about) them in deterministic mode unless this variable names one.
_CUBLAS_CONFIG = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def deterministic_kernels(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Run the block with torch's deterministic kernels when ``device`` is CUDA; restore the caller's settings after.

    On CUDA, ``index_add`` (the gradient of every gather: the rasterizer's, the vertex normals', the losses') and
    ``scatter_add`` sum with float atomics in a varying order, so two runs differ in the last bits and a fit of
    hundreds of steps drifts apart. The CPU kernels the core uses are deterministic already, and torch has no such
    mode for MPS, so other devices run the block unchanged. An op without a deterministic CUDA kernel warns
    (``warn_only``) rather than stopping the fit. The mode is process-wide while the block runs.
    """
    if not enabled or device.type != "cuda":
        yield
        return
    mode = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    name, value = _CUBLAS_CONFIG
    cublas = os.environ.get(name)
    if cublas is None:
        os.environ[name] = value
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])
        if cublas is None:
            os.environ.pop(name, None)


def meta_device() -> torch.device:
    """The shape-only device: build a module there (no memory, no random init), then load weights with assign."""
    return torch.device("meta")


#: Dense work runs on at most this many times the starting thread count.
DENSE_MOST = 4
#: Threads dense work adds per thread of the other processes that is ready to run.
DENSE_PER_OTHER = 2
#: Looks at the running threads per count, and the seconds between them (the count changes at each scheduler tick).
RUNNABLE_SAMPLES = 5
RUNNABLE_SPACING = 0.002
#: ``PIXEL3DMM_THREADS``: ``auto`` (default: adapt to the cores other processes leave free) or a fixed count.
THREADS_ENV = "PIXEL3DMM_THREADS"


def _own_cpu_seconds() -> float:
    """CPU seconds this process has used, all threads (Blender's own included when the core runs inside it)."""
    return time.process_time()


def _linux_busy_seconds(cpus: set[int]) -> float | None:
    """CPU seconds the given cores have spent busy since boot, from ``/proc/stat`` (None when unreadable)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    found = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal ...: busy = everything but idle and iowait
        values = [int(v) for v in fields[:8]]
        ticks += sum(values) - values[3] - values[4]
        found += 1
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


def _windows_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot, from ``GetSystemTimes`` (kernel time includes idle)."""
    import ctypes

    idle, kernel, user = (ctypes.c_ulonglong() for _ in range(3))
    if not ctypes.windll.kernel32.GetSystemTimes(ctypes.byref(idle), ctypes.byref(kernel), ctypes.byref(user)):
        return None
    return (kernel.value + user.value - idle.value) * 1e-7


def _linux_runnable_others(proc: Path = Path("/proc")) -> float | None:
    """Threads of other processes ready to run right now: the kernel's ``procs_running`` (``/proc/stat``) less this
    process's own threads in state R (``/proc/self/task``); None when unreadable."""
    try:
        running = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                       if line.startswith("procs_running "))
        tasks = list((proc / "self" / "task").iterdir())
    except (OSError, StopIteration, ValueError):
        return None
    own = 0
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        own += stat[stat.rindex(")") + 2] == "R"  # the state follows the parenthesised name
    return float(max(0, running - own))


@dataclass(frozen=True)
class LoadReader:
    """How busy the machine is, as the system reports it.

    ``busy()``: CPU seconds the cores this process may use have spent busy since boot (None when unreadable);
    ``cores``: how many cores that is; ``runnable()``: threads of other processes ready to run at this instant,
    machine-wide (None where the system does not say, or momentarily cannot)."""

    busy: Callable[[], float | None]
    cores: int
    runnable: Callable[[], float | None] | None = None


def _load_reader() -> LoadReader | None:
    """The reader for this system: Linux and Windows report the busy time, Linux also the runnable threads."""
    if hasattr(os, "sched_getaffinity") and Path("/proc/stat").exists():
        cpus = set(os.sched_getaffinity(0))
        return LoadReader(lambda: _linux_busy_seconds(cpus), len(cpus), _linux_runnable_others)
    if os.name == "nt":
        return LoadReader(_windows_busy_seconds, os.cpu_count() or 1)
    return None


class CpuThreads:
    """Torch's intra-op thread count for CPU work on a machine that other processes share.

    With every core busy, a parallel op waits at its barrier for the thread that shares its core with another
    process, so two threads beside one spinning process run 2-4x slower than one thread (bench/bench_busy.py).
    Used as a context on the thread that runs the work (OpenMP counts threads per calling thread), it starts with
    torch's count and, at each :meth:`poll` at least ``interval`` seconds after the last, sets the count to the
    cores the other processes left free in between, measured from the system's busy time less this process's CPU
    time: at most the count it started with and at least one.

    Dense work (``poll(dense=True)``: the networks' large matrix products, which split into few big chunks and
    barely wait at barriers) instead adds :data:`DENSE_PER_OTHER` threads per thread of the other processes that is
    ready to run, up to :data:`DENSE_MOST` times the starting count. The scheduler shares a busy core per thread, so
    dense work on ``n`` threads beside ``m`` others gets ``n / (n + m)`` of the cores, and this keeps that share above
    two thirds (up to the cap): work that splits evenly then takes at most 1.5 times its quiet time, where one
    thread per other thread would allow twice. The others are counted when the dense work starts (Linux: the
    kernel's running threads less this process's, the median of :data:`RUNNABLE_SAMPLES` looks, scaled to the cores
    this process may use, and only when the busy time shows them keeping at least half a core busy); their busy
    cores alone would undercount them, since they shrink as the dense work takes its share (beside two 2-thread
    torch jobs they measured 1.4 cores, and one network pass took 9.3 s on 4 threads, 7.4 s on 6, 6.6 s on 8,
    against 3.5-4.0 s quiet on 2; in another window 6.8-8.2 s on 6, 6.4-6.6 s on 8, 6.2-6.5 s on 10, 5.9-6.3 s on
    12). Where the system does not report running threads (Windows) the busy cores stand in for them. ``policy``
    (default: ``$PIXEL3DMM_THREADS`` or ``auto``) may instead fix the count. On systems where the busy time cannot
    be read (macOS) ``auto`` keeps torch's count. Leaving the context restores the caller's count.
    """

    def __init__(self, policy: str | int | None = None, interval: float = 1.0, reader: LoadReader | None = None):
        policy = os.environ.get(THREADS_ENV, "auto") if policy is None else policy
        if str(policy).strip().lower() == "auto":
            self.fixed = None
        else:
            try:
                self.fixed = int(policy)
            except ValueError:
                raise Pixel3DMMError(f"{THREADS_ENV} must be 'auto' or a number of threads, not '{policy}'.") from None
            if self.fixed < 1:
                raise Pixel3DMMError(f"{THREADS_ENV} must be at least 1, not {self.fixed}.")
        self.interval = interval
        self._reader = reader if reader is not None else _load_reader()
        self._saved = self._most = 1
        self._last: tuple[float, float, float] | None = None
        self._others = 0.0

    def __enter__(self) -> "CpuThreads":
        self._saved = torch.get_num_threads()
        self._most = self._saved if self.fixed is None else self.fixed
        torch.set_num_threads(self._most)
        self._last = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self._saved)

    def _sample(self) -> tuple[float, float, float] | None:
        if self.fixed is not None or self._reader is None:
            return None
        busy = self._reader.busy()
        return None if busy is None else (time.monotonic(), busy, _own_cpu_seconds())

    def poll(self, dense: bool = False) -> int:
        """Set the thread count for the work that follows (``dense``: see the class), re-measuring the others'
        load when ``interval`` has passed; returns the count in use."""
        if self._last is None:
            return torch.get_num_threads()
        if time.monotonic() - self._last[0] >= self.interval:
            now = self._sample()
            if now is not None:
                wall = now[0] - self._last[0]
                self._others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
                self._last = now
        if dense:
            threads = min(DENSE_MOST * self._most, self._most + int(DENSE_PER_OTHER * self._competing() + 0.5))
        else:
            threads = max(1, min(self._most, int(self._reader.cores - self._others + 0.5)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads

    def _competing(self) -> float:
        """Threads of other processes competing for this process's cores (see the class): none while they keep
        under half a core busy."""
        if self._others < 0.5:
            return 0.0
        if self._reader.runnable is None:
            return self._others
        looks = []
        for i in range(RUNNABLE_SAMPLES):
            if i:
                time.sleep(RUNNABLE_SPACING)
            looks.append(self._reader.runnable())
        looks = [v for v in looks if v is not None]
        if not looks:
            return self._others
        share = self._reader.cores / max(self._reader.cores, os.cpu_count() or 1)
        return max(self._others, statistics.median(looks) * share)
