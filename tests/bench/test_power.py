"""edgeseg bench --power: the tegrastats parser on lines recorded on real Jetsons, tegrastats run
for real (a script on PATH printing those lines), RAPL on this machine where it has it and on a
folder laid out like powercap, NVML against a fake shaped like pynvml, and the bench's rows."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import types
from pathlib import Path

import pytest

from edgeseg.bench import power
from edgeseg.bench.power import (
    NoPower,
    NvmlMeter,
    PowerReading,
    RaplMeter,
    TegrastatsMeter,
    board_power,
    open_meter,
    tegrastats_rails,
)

# Recorded tegrastats lines, each as its author pasted it.
# Orin Nano 8 GB (6 cores, 7620 MB), JetPack 6 format: lower-case thermal zones, VDD_IN first.
# The memory clock of 3199 MHz is JetPack 6.2's "Super" mode. From
# https://github.com/rbonghi/jetson_stats/issues/624 (2025-05-16).
ORIN_NANO_JP6 = (
    "05-15-2025 18:30:28 RAM 6982/7620MB (lfb 5x1MB) SWAP 2640/16384MB (cached 202MB) "
    "CPU [97%@1984,95%@1984,95%@1984,91%@1984,88%@1984,93%@247] EMC_FREQ 18%@3199 "
    "GR3D_FREQ 84%@[713] NVENC 1%@115 NVDEC 40%@115 NVJPG off NVJPG1 off VIC 31%@115 OFA off "
    "NVDLA0 off PVA0_FREQ off APE 174 cv0@63.031C cpu@65.562C soc2@64.156C soc0@63.031C "
    "cv1@62.937C gpu@63.5C tj@65.562C soc1@64.718C cv2@60.875C VDD_IN 17946mW/15710mW "
    "VDD_CPU_GPU_CV 8896mW/7585mW VDD_SOC 3923mW/3515mW"
)
# AGX Orin 64 GB (12 cores, 62801 MB), JetPack 5 format: upper-case thermal zones with the dev
# kit's Tboard/Tdiode, both INA3221 chips with their NC channels (the issue does not name the
# release; JetPack 6 writes the zones lower-case). From
# https://github.com/GDWR/jetson_exporter/issues/14 (2025-04-11).
AGX_ORIN_JP5 = (
    "04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) "
    "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.562C Tboard@32C "
    "SOC2@40.093C Tdiode@33C SOC0@41.093C CV1@-256C GPU@-256C tj@44.343C SOC1@41.25C CV2@-256C "
    "VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"
)
# AGX Xavier, JetPack 4.2: rails without a unit and without an input rail. From
# https://github.com/martinkersner/gtop/pull/7 (2019-06-17).
AGX_XAVIER_JP4 = (
    "RAM 14700/15692MB (lfb 3x2MB) SWAP 898/8192MB (cached 23MB) "
    "CPU [0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190] EMC_FREQ 0% "
    "GR3D_FREQ 0% AO@30C GPU@30.5C Tboard@31C Tdiode@32C AUX@30.5C CPU@31.5C thermal@30.8C "
    "PMIC@100C GPU 463/463 CPU 618/618 SOC 2936/2936 CV 0/0 VDDRQ 309/309 SYS5V 3306/3306"
)
# TX2 before JetPack 5: VDD_IN among the sub-rails, no unit. From
# https://github.com/henrygd/beszel/pull/1631 (2026-01-12).
TX2_JP4 = (
    "RAM 3276/7859MB (lfb 5x4MB) SWAP 1626/12122MB (cached 181MB) "
    "CPU [44%@1421,49%@2031,67%@2034,17%@1420,25%@1419,8%@1420] EMC_FREQ 1%@1866 "
    "GR3D_FREQ 0%@114 APE 150 MTS fg 1% bg 1% PLL@42.5C MCPU@42.5C PMIC@50C Tboard@38C "
    "GPU@39.5C BCPU@42.5C thermal@41.3C Tdiode@39.25C VDD_SYS_GPU 182/182 VDD_SYS_SOC 730/730 "
    "VDD_4V0_WIFI 0/0 VDD_IN 5297/5297 VDD_SYS_CPU 1917/1917 VDD_SYS_DDR 1241/1241"
)


# ---------------------------------------------------------------------------- tegrastats lines


def test_orin_jetpack6_line_reads_the_module_input_rail():
    rails = tegrastats_rails(ORIN_NANO_JP6)
    assert rails == {"VDD_IN": 17946, "VDD_CPU_GPU_CV": 8896, "VDD_SOC": 3923}  # now, not average
    assert board_power(rails) == (17.946, "VDD_IN")  # the sub-rails are inside VDD_IN


def test_agx_orin_jetpack5_line_sums_its_three_supplies():
    rails = tegrastats_rails(AGX_ORIN_JP5)
    assert "NC" not in rails and rails["VDDQ_VDD2_1V8AO"] == 301
    watts, how = board_power(rails)
    # VDDQ_VDD2_1V8AO is fed from VIN_SYS_5V0: adding it would count it twice
    assert watts == pytest.approx((2340 + 390 + 4025) / 1000)
    assert how == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"


def test_agx_xavier_line_without_units_sums_its_six_rails():
    rails = tegrastats_rails(AGX_XAVIER_JP4)
    assert set(rails) == {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"}  # RAM 14700/15692MB is not
    watts, how = board_power(rails)
    assert watts == pytest.approx((463 + 618 + 2936 + 0 + 309 + 3306) / 1000)
    assert how == "GPU+CPU+SOC+CV+VDDRQ+SYS5V"


def test_older_line_with_an_input_rail_reads_it_alone():
    assert board_power(tegrastats_rails(TX2_JP4)) == (5.297, "VDD_IN")


def test_line_without_power_rails_gives_none():
    line = "RAM 3468/3983MB (lfb 48x4MB) SWAP 873/8192MB (cached 295MB) GR3D_FREQ 3%@76"
    assert tegrastats_rails(line) == {} and board_power({}) is None
    assert board_power({"VDD_CPU_GPU_CV": 900}) is None  # a sub-rail alone is not the board


# ---------------------------------------------------------------------------- tegrastats, run


def _fake_tegrastats(folder: Path, lines: list[str], period: float = 0.02) -> Path:
    """A ``tegrastats`` on PATH that records its arguments and prints ``lines`` over and over
    until it is terminated, flushing each like the real one writing to a pipe."""
    folder.mkdir(exist_ok=True)
    exe = folder / "tegrastats"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        f"open({str(folder / 'args')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        f"lines = {lines!r}\n"
        "i = 0\n"
        "while True:\n"
        "    print(lines[i % len(lines)], flush=True)\n"
        "    i += 1\n"
        f"    time.sleep({period})\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """Put a folder of fake tools first on PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_tegrastats_meter_runs_tegrastats_and_averages_its_samples(on_path):
    _fake_tegrastats(on_path, [ORIN_NANO_JP6, AGX_XAVIER_JP4.replace("SYS5V", "XX")])
    meter = open_meter("cpu")  # a Jetson's board holds CPU and GPU: tegrastats either way
    assert isinstance(meter, TegrastatsMeter)
    meter.start()
    time.sleep(0.4)
    proc = meter._proc
    reading = meter.stop()
    assert proc is not None and proc.poll() is not None  # the subprocess is gone
    assert (on_path / "args").read_text() == "--interval 100"
    # the line with no known rail layout is skipped, not averaged in as zero
    assert reading.watts == pytest.approx(17.946)
    assert reading.source == "tegrastats VDD_IN"
    assert reading.seconds >= 0.4
    assert reading.joules == pytest.approx(reading.watts * reading.seconds)
    assert reading.row(10) == {
        "watts": 17.946,
        "joules_per_frame": round(reading.joules / 10, 5),
        "power_source": "tegrastats VDD_IN",
    }


def test_tegrastats_meter_waits_for_a_first_sample_of_a_short_run(on_path):
    _fake_tegrastats(on_path, [AGX_ORIN_JP5], period=0.2)
    meter = open_meter("cuda")  # tegrastats comes before NVML: NVML has no power on a Jetson
    meter.start()
    reading = meter.stop()  # at once: before tegrastats printed anything, maybe
    assert reading.watts == pytest.approx(6.755)


def test_tegrastats_without_known_rails_says_so(on_path):
    _fake_tegrastats(on_path, ["RAM 3468/3983MB (lfb 48x4MB) GR3D_FREQ 3%@76"])
    meter = open_meter("cpu")
    meter.start()
    time.sleep(0.1)
    with pytest.raises(NoPower, match="tegrastats printed no known power rail"):
        meter.stop()


# ---------------------------------------------------------------------------- RAPL


def _powercap(root: Path, packages: dict[str, tuple[int, int]]) -> Path:
    """A folder laid out like /sys/class/powercap: ``intel-rapl:N`` -> (energy_uj, max range),
    each with a core sub-domain that must not be counted."""
    for dom, (uj, wrap) in packages.items():
        d = root / dom
        d.mkdir(parents=True)
        (d / "name").write_text(f"package-{dom.split(':')[1]}\n")
        (d / "energy_uj").write_text(f"{uj}\n")
        (d / "max_energy_range_uj").write_text(f"{wrap}\n")
        sub = root / f"{dom}:0"
        sub.mkdir()
        (sub / "name").write_text("core\n")
        (sub / "energy_uj").write_text("5\n")
        (sub / "max_energy_range_uj").write_text(f"{wrap}\n")
    return root


def test_rapl_sums_packages_and_undoes_a_counter_wrap(tmp_path):
    root = _powercap(
        tmp_path / "powercap",
        {"intel-rapl:0": (1_000_000, 10**9), "intel-rapl:1": (999_000_000, 10**9)},
    )
    meter = RaplMeter(root)
    assert meter.source == "RAPL package-0+package-1"
    meter.start()
    time.sleep(0.05)
    (root / "intel-rapl:0" / "energy_uj").write_text("4000000\n")  # +3 J
    (root / "intel-rapl:1" / "energy_uj").write_text("1000000\n")  # wrapped: +2 J
    (root / "intel-rapl:0:0" / "energy_uj").write_text("999999999\n")  # a sub-domain: ignored
    reading = meter.stop()
    assert reading.joules == pytest.approx(5.0)
    assert reading.watts == pytest.approx(5.0 / reading.seconds)


def test_rapl_unreadable_says_root_only(tmp_path, monkeypatch):
    root = _powercap(tmp_path / "powercap", {"intel-rapl:0": (1, 10)})
    # the tests may run as root, who reads a 0400 file anyway: deny as the kernel does a user
    monkeypatch.setattr(power.os, "access", lambda path, mode: False)
    with pytest.raises(
        NoPower, match=r"not readable \(permission denied: root only since Linux 5.10\)"
    ):
        RaplMeter(root)


def test_rapl_missing_domains_are_named(tmp_path):
    with pytest.raises(NoPower, match="no .*nothing"):
        RaplMeter(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoPower, match="no RAPL package domain"):
        RaplMeter(tmp_path / "empty")


def test_this_machine_measures_the_cpu_or_says_why(monkeypatch):
    """For real: RAPL where this machine has a readable one, else the reason."""
    monkeypatch.setattr(power.shutil, "which", lambda name: None)  # not a Jetson, here
    try:
        meter = open_meter("cpu")
    except NoPower as e:
        assert str(e).startswith("tegrastats not found (not a Jetson); ")
        assert "powercap" in str(e) or "RAPL" in str(e)
        return
    meter.start()
    sum(i * i for i in range(200_000))
    reading = meter.stop()
    assert reading.joules > 0 and reading.watts > 0 and reading.source.startswith("RAPL ")


def test_open_meter_for_the_cpu_uses_rapl(tmp_path, monkeypatch):
    monkeypatch.setattr(power.shutil, "which", lambda name: None)
    root = _powercap(tmp_path / "powercap", {"intel-rapl:0": (0, 10**9)})
    assert isinstance(open_meter("cpu", powercap=root), RaplMeter)
    monkeypatch.setattr(power, "POWERCAP", tmp_path / "absent")
    with pytest.raises(NoPower, match=r"tegrastats not found .*; no .*absent"):
        open_meter("cpu")


def test_idle_draw_is_measured_apart_and_subtracted_per_frame(on_path):
    _fake_tegrastats(on_path, [ORIN_NANO_JP6])  # the same draw idle and running here
    watts, source = power.idle_watts("cpu", seconds=0.3)
    assert watts == pytest.approx(17.946) and source == "tegrastats"
    reading = PowerReading(watts=20.0, joules=40.0, seconds=2.0, source="tegrastats VDD_IN")
    row = reading.row(100, watts)
    assert row["idle_watts"] == 17.946
    # 40 J in 2 s, of which 2 s x 17.946 W the device draws anyway: 4.108 J over 100 frames
    assert row["joules_per_frame_above_idle"] == pytest.approx(0.04108)
    assert "idle_watts" not in reading.row(100)
    assert reading.row(100, 25.0)["joules_per_frame_above_idle"] == 0.0  # never below zero


def test_an_idle_draw_of_another_source_is_not_subtracted(on_path):
    from edgeseg.bench.runner import _metered

    _fake_tegrastats(on_path, [ORIN_NANO_JP6])
    pipe = types.SimpleNamespace(run=lambda: {"frames_out": 10})
    _, row = _metered(pipe, "cpu", (5.0, "RAPL package-0"))
    assert row["power_source"] == "tegrastats VDD_IN" and "idle_watts" not in row
    _, row = _metered(pipe, "cpu", (5.0, "tegrastats"))
    assert row["idle_watts"] == 5.0 and row["joules_per_frame_above_idle"] >= 0


def test_idle_draw_without_a_power_source_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(power.shutil, "which", lambda name: None)
    monkeypatch.setattr(power, "POWERCAP", tmp_path / "absent")
    assert power.idle_watts("cpu", seconds=0.01) is None


# ---------------------------------------------------------------------------- NVML


class _NVMLError(Exception):
    pass


def _fake_nvml(energy_mj: list[int] | None, power_mw: int = 0, init_fails: bool = False):
    """A module shaped like pynvml (nvidia-ml-py): the calls the meter makes, errors as
    NVMLError subclasses; ``energy_mj=None``: a GPU without the energy counter (before Volta)."""
    m = types.SimpleNamespace(calls=[], NVMLError=_NVMLError)
    m.NVMLError_NotSupported = type("NVMLError_NotSupported", (_NVMLError,), {})

    def init():
        m.calls.append("init")
        if init_fails:
            raise _NVMLError("Driver Not Loaded")

    def energy(handle):
        assert handle == ("gpu", 1)
        if energy_mj is None:
            raise m.NVMLError_NotSupported("Not Supported")
        return energy_mj.pop(0)

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.calls.append("shutdown")
    m.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    m.nvmlDeviceGetTotalEnergyConsumption = energy
    m.nvmlDeviceGetPowerUsage = lambda handle: power_mw
    return m


def test_nvml_energy_counter_gives_joules_directly():
    nvml = _fake_nvml([1_000_000, 1_003_500])
    meter = NvmlMeter(nvml, 1)
    meter.start()
    time.sleep(0.05)
    reading = meter.stop()
    assert reading.joules == pytest.approx(3.5)  # mJ to J
    assert reading.watts == pytest.approx(3.5 / reading.seconds)
    assert reading.source == "NVML GPU 1 energy counter" and nvml.calls == ["init", "shutdown"]


def test_nvml_without_the_counter_samples_power_usage():
    nvml = _fake_nvml(None, power_mw=42_500)
    meter = NvmlMeter(nvml, 1)
    meter.start()
    time.sleep(0.2)
    reading = meter.stop()
    assert reading.watts == pytest.approx(42.5)  # mW to W
    assert reading.joules == pytest.approx(42.5 * reading.seconds)
    assert reading.source == "NVML GPU 1 power samples" and nvml.calls[-1] == "shutdown"


def test_nvml_without_a_driver_says_so():
    with pytest.raises(NoPower, match=r"NVML could not start \(Driver Not Loaded\)"):
        NvmlMeter(_fake_nvml([0], init_fails=True))


def test_open_meter_for_a_gpu_uses_nvml_or_says_why(monkeypatch):
    monkeypatch.setattr(power.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed (import fails)
    with pytest.raises(NoPower) as e:
        open_meter("cuda:1")
    assert "NVML: GPU power needs NVML's Python binding: pip install nvidia-ml-py" in str(e.value)
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([0, 0]))
    meter = open_meter("cuda:1")
    assert isinstance(meter, NvmlMeter) and meter.index == 1


# ---------------------------------------------------------------------------- the bench


def test_bench_power_adds_watts_and_joules_per_frame(tiny_onnx, on_path, tmp_path, capsys):
    from edgeseg.cli import main

    _fake_tegrastats(on_path, [ORIN_NANO_JP6])
    out = tmp_path / "b.json"
    argv = ["bench", str(tiny_onnx), "--source", "synthetic:128x64", "--frames", "6",
            "--warmup", "1", "--no-baselines", "--no-isolate", "--power",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "J/frame" in table and "power: tegrastats VDD_IN" in table
    row = json.loads(out.read_text())["results"][0]
    assert row["watts"] == pytest.approx(17.946) and row["power_source"] == "tegrastats VDD_IN"
    assert row["pipeline"]["frames"] == 6 and 0 < row["joules_per_frame"]
    assert "power_none_why" not in row
    # the fake board draws the same idle: a frame costs nothing above it, give or take timing
    assert row["idle_watts"] == pytest.approx(17.946) and "J/frame over idle" in table
    assert 0 <= row["joules_per_frame_above_idle"] < row["joules_per_frame"]


def test_bench_row_without_a_source_says_why(tiny_onnx, tmp_path, monkeypatch):
    from edgeseg.bench.runner import BenchConfig, run_bench

    monkeypatch.setattr(power.shutil, "which", lambda name: None)
    monkeypatch.setattr(power, "POWERCAP", tmp_path / "absent")
    cfg = BenchConfig(models=[str(tiny_onnx)], source="synthetic:128x64", frames=3, warmup=1,
                      baselines=False, isolate=False, power=True)  # fmt: skip
    row = run_bench(cfg, progress=lambda _m: None)["results"][0]
    assert row["power_none_why"].startswith("tegrastats not found (not a Jetson); no ")
    assert "watts" not in row and "joules_per_frame" not in row
    without = run_bench(BenchConfig(**{**cfg.__dict__, "power": False}), lambda _m: None)
    assert not {"watts", "power_source", "power_none_why"} & set(without["results"][0])
