"""Watts and joules per frame for ``edgeseg bench --power``: one :class:`PowerMeter` interface,
three sources behind it.

A meter is started before the timed frames and stopped after them; it gives the mean power over
that interval and the energy in joules (joules per frame = energy / frames). Each source measures
a **whole device, not this process**: every other process, the idle floor and (on a Jetson) the
memory and I/O rails are in the figure, so compare rows measured on a quiet machine.

- **tegrastats** (Jetson; NVML reports no power there): ``tegrastats --interval MS`` in a
  subprocess, one line per sample. The module's total is ``VDD_IN`` where the module has that
  rail (Orin NX/Nano, Xavier NX, TX2, TX1; ``POM_5V_IN`` on the Nano): the module's input, which
  NVIDIA's forum calls the total power of the module. AGX Orin has no input rail: its total is
  ``VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0`` (``VDDQ_VDD2_1V8AO`` is fed from ``VIN_SYS_5V0``,
  so adding it would count it twice). AGX Xavier has none either: the sum of its six rails (GPU,
  CPU, SOC, CV, VDDRQ, SYS5V). The rail layouts are those of energymon's
  jetson/JetsonPowerRails.md, from NVIDIA's developer guides and device trees.
- **NVML** (other NVIDIA GPUs; ``pip install nvidia-ml-py``): the GPU board's energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, mJ, Volta and newer), else ``nvmlDeviceGetPowerUsage``
  (mW) sampled. The GPU board only: the host CPU's share is not in it.
- **RAPL** (x86 Linux, Intel and AMD): ``/sys/class/powercap/intel-rapl:N/energy_uj`` of every
  CPU package (its DRAM and uncore included where the package domain covers them), the counter's
  wrap undone with ``max_energy_range_uj``. Root-only since Linux 5.10 (CVE-2020-8694).

:func:`open_meter` picks the source for a configuration's device, or raises :class:`NoPower`
with the reason a row has none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

POWERCAP = Path("/sys/class/powercap")
TEGRASTATS_INTERVAL_MS = 100
NVML_INTERVAL_S = 0.05
IDLE_S = 1.0  # the idle draw measured before a metered run

# name 1234mW/1234mW (JetPack 5 and 6), name 1234/1234 (JetPack 4), a third /value on newer
# releases; the lookahead keeps "RAM 1313/30697MB" out.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/\d+(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)")
# Board totals by the rails a line has, first match wins (see the module docstring).
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_SUMMED = (
    ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),  # AGX Orin
    ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"),  # AGX Xavier
)


class NoPower(Exception):
    """No power source here; the message says why."""


@dataclass
class PowerReading:
    """What a meter measured between start and stop."""

    watts: float
    joules: float
    seconds: float
    source: str

    def row(self, frames: int, idle_watts: float | None = None) -> dict[str, Any]:
        """The bench row's fields for ``frames`` frames timed in the interval; with the draw
        of the same device idle, also the joules a frame costs above it (what running the
        model adds; a board's whole draw keeps its fans, memory and radios too)."""
        row: dict[str, Any] = {
            "watts": round(self.watts, 3),
            "joules_per_frame": round(self.joules / frames, 5) if frames else None,
            "power_source": self.source,
        }
        if idle_watts is not None:
            above = max(0.0, self.joules - idle_watts * self.seconds)
            row["idle_watts"] = round(idle_watts, 3)
            row["joules_per_frame_above_idle"] = round(above / frames, 5) if frames else None
        return row


class PowerMeter(Protocol):
    """Started before the timed frames, stopped after them."""

    source: str

    def start(self) -> None: ...

    def stop(self) -> PowerReading: ...


# ---------------------------------------------------------------------------- tegrastats


def tegrastats_rails(line: str) -> dict[str, int]:
    """The rails of one tegrastats line and their instantaneous power in mW (the first of
    ``now/average``); no-connection channels (``NC``) left out."""
    return {name: int(mw) for name, mw in _RAIL.findall(line) if name != "NC"}


def board_power(rails: dict[str, int]) -> tuple[float, str] | None:
    """The board's total in watts and how it was formed, or None when the line has no rail this
    module knows the layout of."""
    for name in _INPUT_RAILS:
        if name in rails:
            return rails[name] / 1000, name
    for names in _SUMMED:
        if all(n in rails for n in names):
            return sum(rails[n] for n in names) / 1000, "+".join(names)
    return None


class TegrastatsMeter:
    """Samples ``tegrastats --interval MS`` (a Jetson's board power) on a reader thread."""

    def __init__(self, exe: str = "tegrastats", interval_ms: int = TEGRASTATS_INTERVAL_MS) -> None:
        self.exe, self.interval_ms = exe, interval_ms
        self.source = "tegrastats"
        self._samples: list[float] = []
        self._rails = ""
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        cmd = [self.exe, "--interval", str(self.interval_ms)]
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
            )
        except OSError as e:
            raise NoPower(f"tegrastats could not start ({e})") from None
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            total = board_power(tegrastats_rails(line))
            if total is not None:
                self._samples.append(total[0])
                self._rails = total[1]

    def stop(self) -> PowerReading:
        seconds = time.perf_counter() - self._t0
        # A run shorter than one interval: wait for the first line rather than report nothing.
        deadline = time.perf_counter() + max(1.0, 3 * self.interval_ms / 1000)
        while not self._samples and time.perf_counter() < deadline and self._alive():
            time.sleep(0.01)
        self._close()
        if not self._samples:
            raise NoPower(
                f"tegrastats printed no known power rail in {seconds:.1f} s "
                "(rails this module reads: VDD_IN, POM_5V_IN, AGX Orin's and AGX Xavier's)"
            )
        watts = sum(self._samples) / len(self._samples)
        return PowerReading(watts, watts * seconds, seconds, f"tegrastats {self._rails}")

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _close(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)


# ---------------------------------------------------------------------------- NVML


class NvmlMeter:
    """An NVIDIA GPU board's energy through NVML (``nvml``: the ``pynvml`` module of
    nvidia-ml-py, or anything shaped like it)."""

    def __init__(self, nvml: ModuleType, index: int = 0) -> None:
        self.nvml, self.index = nvml, index
        self.source = f"NVML GPU {index}"
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy0: int | None = None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise NoPower(f"NVML could not start ({e}): no NVIDIA driver?") from None
        try:
            self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as e:
            nvml.nvmlShutdown()
            raise NoPower(f"NVML has no GPU {index} ({e})") from None

    def start(self) -> None:
        self._t0 = time.perf_counter()
        try:  # the counter (Volta and newer) integrates in the driver: nothing to sample
            self._energy0 = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
            return
        except self.nvml.NVMLError:
            self._energy0 = None
        try:
            self._sample()
        except self.nvml.NVMLError as e:
            self.nvml.nvmlShutdown()
            raise NoPower(f"NVML gives neither energy nor power for GPU {self.index} ({e})") from e
        self._thread = threading.Thread(target=self._sampling, name="nvml", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        mw = self.nvml.nvmlDeviceGetPowerUsage(self._handle)
        self._samples.append((time.perf_counter(), mw / 1000))

    def _sampling(self) -> None:
        while not self._stop.wait(NVML_INTERVAL_S):
            try:
                self._sample()
            except self.nvml.NVMLError:
                return

    def stop(self) -> PowerReading:
        try:
            if self._energy0 is not None:
                mj = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
                seconds = time.perf_counter() - self._t0
                joules = (mj - self._energy0) / 1000
                watts = joules / seconds if seconds > 0 else 0.0
                return PowerReading(watts, joules, seconds, f"{self.source} energy counter")
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._sample()
            seconds = time.perf_counter() - self._t0
            joules = _trapezoid(self._samples)
            span = self._samples[-1][0] - self._samples[0][0]
            watts = joules / span if span > 0 else self._samples[-1][1]
            return PowerReading(watts, watts * seconds, seconds, f"{self.source} power samples")
        finally:
            self.nvml.nvmlShutdown()


def _trapezoid(samples: list[tuple[float, float]]) -> float:
    """Joules under (seconds, watts) samples."""
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(samples, samples[1:]))


# ---------------------------------------------------------------------------- RAPL


@dataclass
class _Package:
    name: str
    energy: Path
    wrap_uj: int


def rapl_packages(root: Path = POWERCAP) -> list[_Package]:
    """The CPU package domains under a powercap folder (``intel-rapl:N``; its ``:N:M``
    sub-domains are parts of a package and would count twice). Raises :class:`NoPower`."""
    if not root.is_dir():
        raise NoPower(f"no {root} (not Linux, or no powercap driver in this kernel or container)")
    domains = sorted(d for d in root.glob("intel-rapl:*") if d.name.count(":") == 1)
    if not domains:
        raise NoPower(f"no RAPL package domain in {root} (not x86, or intel_rapl not loaded)")
    out = []
    for d in domains:
        energy = d / "energy_uj"
        if not os.access(energy, os.R_OK):
            raise NoPower(
                f"RAPL {energy} is not readable (permission denied: root only since Linux 5.10)"
            )
        name = (d / "name").read_text().strip() if (d / "name").is_file() else d.name
        out.append(_Package(name, energy, int((d / "max_energy_range_uj").read_text())))
    return out


class RaplMeter:
    """CPU package energy from RAPL counters (Intel, and AMD through the same interface)."""

    def __init__(self, root: Path = POWERCAP) -> None:
        self.packages = rapl_packages(root)
        self.source = "RAPL " + "+".join(p.name for p in self.packages)

    def _read(self) -> list[int]:
        return [int(p.energy.read_text()) for p in self.packages]

    def start(self) -> None:
        self._t0, self._uj0 = time.perf_counter(), self._read()

    def stop(self) -> PowerReading:
        uj1, seconds = self._read(), time.perf_counter() - self._t0
        # A counter that passed its maximum restarted at zero (once: at 100 W the usual
        # 262 kJ range takes 40 minutes).
        uj = sum(
            b - a if b >= a else b + p.wrap_uj - a for a, b, p in zip(self._uj0, uj1, self.packages)
        )
        joules = uj / 1e6
        return PowerReading(joules / seconds if seconds > 0 else 0.0, joules, seconds, self.source)


# ---------------------------------------------------------------------------- choice


def _nvml_module() -> ModuleType:
    from edgeseg._lazy import require

    return require("pynvml")


def _gpu_index(device: str) -> int:
    """``cuda:1`` -> 1; NVML counts GPUs in PCI order, CUDA too under
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``."""
    _, _, n = device.partition(":")
    return int(n) if n.isdigit() else 0


def idle_watts(device: str, seconds: float = IDLE_S) -> tuple[float, str] | None:
    """The mean draw of ``device``'s power source over ``seconds`` of this process doing
    nothing, and that source (a meter's ``source``); None where there is none. Measured
    before any model is loaded, so that clocks raised by a warm-up do not count as idle."""
    try:
        meter = open_meter(device)
        meter.start()
        time.sleep(seconds)
        return meter.stop().watts, meter.source
    except NoPower:
        return None


def open_meter(device: str, powercap: Path | None = None) -> PowerMeter:
    """The meter for a configuration that ran on ``device`` (``cpu``, ``cuda``, ``cuda:N``):
    tegrastats on a Jetson (its board holds CPU and GPU), NVML for a GPU elsewhere, RAPL for
    the CPU. Raises :class:`NoPower` with every source's reason when none is there."""
    from edgeseg.errors import EdgesegError

    exe = shutil.which("tegrastats")
    if exe:
        return TegrastatsMeter(exe)
    why = ["tegrastats not found (not a Jetson)"]
    if device.startswith("cuda"):
        try:
            return NvmlMeter(_nvml_module(), _gpu_index(device))
        except EdgesegError as e:
            why.append(f"NVML: {e}")
        except NoPower as e:
            why.append(str(e))
        raise NoPower("; ".join(why) + " (a GPU row is measured by NVML only)")
    try:
        return RaplMeter(powercap or POWERCAP)
    except NoPower as e:
        why.append(str(e))
    raise NoPower("; ".join(why))
