"""Device selection and the deterministic-kernel scope the fit runs in."""

import os
import time

import pytest
import torch

from core import device as device_mod
from core.device import CpuThreads, LoadReader, deterministic_kernels, resolve_device
from core.errors import Pixel3DMMError

_VAR = "CUBLAS_WORKSPACE_CONFIG"


@pytest.fixture
def default_mode(monkeypatch):
    """Torch's default (non-deterministic) mode and no cuBLAS setting, whatever an earlier test left."""
    mode = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    monkeypatch.delenv(_VAR, raising=False)
    yield
    torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])


def _mode():
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), os.environ.get(_VAR)


def test_cuda_block_runs_deterministic_and_restores_the_callers_mode(default_mode):
    # The scope only sets torch's flags, so it is checked here without a GPU.
    with deterministic_kernels(torch.device("cuda")):
        assert _mode() == (True, True, ":4096:8")
    assert _mode() == (False, False, None)
    with pytest.raises(KeyError):
        with deterministic_kernels(torch.device("cuda", 0)):
            raise KeyError("a failed fit")
    assert _mode() == (False, False, None)


def test_a_callers_own_settings_survive(default_mode, monkeypatch):
    monkeypatch.setenv(_VAR, ":16:8")
    torch.use_deterministic_algorithms(True)  # strict, not warn-only
    with deterministic_kernels(torch.device("cuda")):
        assert _mode() == (True, True, ":16:8")
    assert _mode() == (True, False, ":16:8")


@pytest.mark.parametrize("device, enabled", [("cpu", True), ("mps", True), ("cuda", False)])
def test_other_devices_and_the_switch_leave_torch_alone(default_mode, device, enabled):
    with deterministic_kernels(torch.device(device), enabled):
        assert _mode() == (False, False, None)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(Pixel3DMMError, match="No usable GPU"):
            resolve_device("gpu")
    with pytest.raises(Pixel3DMMError, match="Unknown device 'warp-drive'"):
        resolve_device("warp-drive")


class _Clock:
    """Stands in for the time module in core.device: wall and process-CPU seconds the test advances."""

    def __init__(self):
        self.wall = 100.0
        self.cpu = 10.0

    def monotonic(self):
        return self.wall

    def process_time(self):
        return self.cpu


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(device_mod, "time", c)
    saved = torch.get_num_threads()
    torch.set_num_threads(4)
    yield c
    torch.set_num_threads(saved)


def _machine(clock, cores=4):
    """A fake busy-time reader of ``cores`` cores; ``state["others"]`` is how many cores other processes keep busy
    and the process's own CPU time counts as busy too, as it does in /proc/stat."""
    state = {"busy": 0.0, "others": 0.0}

    def advance(seconds, own_cores):
        clock.wall += seconds
        clock.cpu += seconds * own_cores
        state["busy"] += seconds * (own_cores + state["others"])

    return LoadReader(lambda: state["busy"], cores), state, advance


def test_threads_follow_the_cores_other_processes_leave_free(clock):
    reader, state, advance = _machine(clock)
    with CpuThreads("auto", interval=1.0, reader=reader) as threads:
        assert torch.get_num_threads() == 4
        state["others"] = 1.0
        advance(0.5, 4)
        assert threads.poll() == 4  # not re-measured before the interval
        advance(0.6, 3)
        assert threads.poll() == 3
        state["others"] = 2.7  # two busy jobs and a bit
        advance(1.0, 1.3)
        assert threads.poll() == 1
        state["others"] = 9.0  # more busy threads than cores: still one thread
        advance(1.0, 0.4)
        assert threads.poll() == 1
        state["others"] = 0.1
        advance(2.0, 1.0)
        assert threads.poll() == 4  # never more than the count it started with
    assert torch.get_num_threads() == 4


def test_dense_work_takes_two_threads_more_per_core_the_others_keep_busy(clock):
    """Where the system does not report running threads (Windows), large matrix products claim two threads more per
    core the others keep busy, up to four times the starting count; the fine-grained work after them goes back to
    the free cores, without waiting for a new measurement."""
    reader, state, advance = _machine(clock)
    with CpuThreads("auto", interval=1.0, reader=reader) as threads:
        assert threads.poll(dense=True) == 4  # quiet: torch's count, as for any work
        state["others"] = 1.0
        advance(1.0, 3)
        assert threads.poll(dense=True) == 6
        assert threads.poll() == 3  # same measurement, fine-grained work
        state["others"] = 2.6
        advance(1.0, 1.4)
        assert threads.poll(dense=True) == 9  # 4 + 2 * 2.6, rounded
        state["others"] = 15.0
        advance(1.0, 0.5)
        assert threads.poll(dense=True) == 16  # at most four times the starting count
        assert threads.poll() == 1
        state["others"] = 0.4  # under half a core: nothing to count
        advance(1.0, 1)
        assert threads.poll(dense=True) == 4
    assert torch.get_num_threads() == 4
    with CpuThreads("2", reader=reader) as threads:  # a fixed count stays fixed
        advance(2.0, 2)
        assert threads.poll(dense=True) == 2


def test_dense_work_counts_the_others_running_threads(clock, monkeypatch):
    """Busy time undercounts the others once dense work takes its share (two 2-thread jobs on 2 cores keep 1.4
    busy): where the system reports running threads, dense work adds two threads per running thread of theirs,
    scaled to the cores this process may use, and only when the others keep at least half a core busy."""
    monkeypatch.setattr(device_mod.os, "cpu_count", lambda: 4)
    looks = iter([])
    monkeypatch.setattr(device_mod.time, "sleep", lambda s: None, raising=False)  # the fake clock: no waiting
    busy, state, advance = _machine(clock)
    reader = LoadReader(busy.busy, busy.cores, lambda: next(looks))
    with CpuThreads("auto", interval=1.0, reader=reader) as threads:
        state["others"] = 1.4
        advance(1.0, 0.6)
        looks = iter([2.0, 4.0, 9.0, 4.0, 9.0])  # the median of the looks (first 8, mean 15, last or most 16)
        assert threads.poll(dense=True) == 12
        assert threads.poll() == 3  # fine-grained work still goes by the free cores
        looks = iter([None] * 5)  # unreadable: the busy cores stand in
        assert threads.poll(dense=True) == 7  # 4 + 2 * 1.4, rounded
        looks = iter([30.0] * 5)
        assert threads.poll(dense=True) == 16  # at most four times the starting count
        state["others"] = 0.3  # below half a core: running threads elsewhere are not competing here
        advance(1.0, 4)
        looks = iter([12.0] * 5)
        assert threads.poll(dense=True) == 4
    monkeypatch.setattr(device_mod.os, "cpu_count", lambda: 16)  # this process may use 4 of 16 cores
    with CpuThreads("auto", interval=1.0, reader=reader) as threads:
        state["others"] = 3.0
        advance(1.0, 1)
        looks = iter([12.0] * 5)
        assert threads.poll(dense=True) == 10  # 4 + 2 * 12 * 4 / 16


def test_the_callers_count_is_the_ceiling_and_comes_back(clock):
    torch.set_num_threads(2)
    reader, state, advance = _machine(clock, cores=8)
    with CpuThreads("auto", interval=1.0, reader=reader) as threads:
        advance(1.0, 2)
        assert threads.poll() == 2
        state["others"] = 7.0
        advance(1.0, 1)
        assert threads.poll() == 1
    assert torch.get_num_threads() == 2


def test_a_fixed_count_or_no_reader_never_adapts(clock, monkeypatch):
    reader, state, advance = _machine(clock)
    state["others"] = 4.0
    with CpuThreads("3", reader=reader) as threads:
        advance(5.0, 3)
        assert threads.poll() == 3 == torch.get_num_threads()
    monkeypatch.setenv("PIXEL3DMM_THREADS", "2")
    with CpuThreads(reader=reader) as threads:
        advance(5.0, 2)
        assert threads.poll() == 2
    monkeypatch.setattr(device_mod, "_load_reader", lambda: None)  # a system whose busy time cannot be read
    with CpuThreads("auto") as threads:
        advance(5.0, 4)
        assert threads.poll() == 4
    assert torch.get_num_threads() == 4


@pytest.mark.parametrize("value", ["many", "0", "-2"])
def test_a_bad_thread_setting_says_what_to_use(value):
    with pytest.raises(Pixel3DMMError, match="PIXEL3DMM_THREADS must be"):
        CpuThreads(value)


@pytest.mark.skipif(not os.path.exists("/proc/stat") or not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_the_linux_reader_counts_the_allowed_cores_busy_time():
    cpus = set(os.sched_getaffinity(0))
    tick = os.sysconf("SC_CLK_TCK")
    rows = {}
    for line in open("/proc/stat"):
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
            rows[int(name[3:])] = user + nice + system + irq + softirq + steal
    expected = sum(rows[c] for c in cpus) / tick
    got = device_mod._linux_busy_seconds(cpus)
    assert expected <= got <= expected + 2.0 * len(cpus)  # read a moment later: only more busy time
    one = min(cpus)
    assert device_mod._linux_busy_seconds({one}) == pytest.approx(rows[one] / tick, abs=2.0)


def test_the_linux_running_threads_reader_leaves_out_this_process(tmp_path):
    """procs_running counts every runnable thread, this process's too; the reader subtracts the threads of its own
    in state R, reading the state after the name's last parenthesis (thread 13 is named "a) R (b" and sleeps)."""
    (tmp_path / "stat").write_text("cpu  1 2 3 4 5 6 7 8 0 0\nctxt 99\nprocs_running 7\nprocs_blocked 1\n")
    for tid, line in {"11": "11 (python3) R 1 2", "12": "12 (torch (omp) ) S 1", "13": "13 (a) R (b) S 1"}.items():
        (tmp_path / "self" / "task" / tid).mkdir(parents=True)
        (tmp_path / "self" / "task" / tid / "stat").write_text(line)
    assert device_mod._linux_runnable_others(tmp_path) == 6.0
    (tmp_path / "stat").write_text("cpu  1 2 3 4\n")
    assert device_mod._linux_runnable_others(tmp_path) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat") or not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_the_linux_running_threads_reader_sees_a_busy_process():
    import subprocess
    import sys

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)
        looks = []
        for _ in range(9):
            looks.append(device_mod._linux_runnable_others())
            time.sleep(0.01)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert sorted(looks)[4] >= 2  # the median look: both spinners are always ready to run
