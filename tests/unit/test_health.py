"""The device health probe against fake procfs and sysfs trees, and once against this
machine's own."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from edgefleet.edge_runtime.health import HealthProbe

GIB = 1 << 30
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 writes for "no limit"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tree:
    """A fake /proc and /sys under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.procfs = root / "proc"
        self.sysfs = root / "sys"
        self.cgroup = self.sysfs / "fs" / "cgroup"
        self.data_dir = root / "data"
        self.data_dir.mkdir()
        self.procfs.mkdir()
        self.sysfs.mkdir()
        self.clock = FakeClock()

    def write(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def proc_stat(self, user: int, system: int, idle: int, iowait: int, guest: int = 0) -> None:
        # user includes guest time, as the kernel counts it.
        self.write(self.procfs / "stat", f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 {guest} 0\n"
                   f"cpu0 {user} 0 {system} {idle} {iowait} 0 0 0 {guest} 0\nctxt 12345\n")

    def meminfo(self, total_kib: int, available_kib: int) -> None:
        self.write(self.procfs / "meminfo", f"MemTotal:       {total_kib} kB\n"
                   f"MemFree:        {available_kib // 2} kB\n"
                   f"MemAvailable:   {available_kib} kB\n")

    def v2(self, path: str = "/app", *, unified: bool = False) -> Path:
        """A process in cgroup v2 `path`; on a hybrid host the unified hierarchy sits at
        fs/cgroup/unified."""
        root = self.cgroup / "unified" if unified else self.cgroup
        self.write(root / "cgroup.controllers", "cpu memory\n")
        self.write(self.procfs / "self" / "cgroup", f"0::{path}\n")
        directory = root / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def v1(self, controllers: dict[str, str], path: str = "/app") -> dict[str, Path]:
        """A process in cgroup v1 `path` of each hierarchy: controller list -> mount dir."""
        lines = [f"{n}:{listed}:{path}" for n, listed in enumerate(controllers, start=2)]
        self.write(self.procfs / "self" / "cgroup", "\n".join([*lines, "0::/"]) + "\n")
        dirs = {}
        for listed, mount_dir in controllers.items():
            directory = self.cgroup / mount_dir / path.lstrip("/")
            directory.mkdir(parents=True, exist_ok=True)
            dirs[listed] = directory
        return dirs

    def probe(self) -> HealthProbe:
        return HealthProbe(self.data_dir, procfs=self.procfs, sysfs=self.sysfs, clock=self.clock)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


# --- CPU ---------------------------------------------------------------------------------


def test_first_sample_has_no_cpu_figures(tree: Tree) -> None:
    tree.proc_stat(user=100, system=100, idle=700, iowait=100)
    sample = tree.probe().sample()
    assert sample.cpu_percent is None and sample.cpu_throttled_percent is None


def test_cpu_percent_is_the_host_busy_share_between_two_samples(tree: Tree) -> None:
    tree.proc_stat(user=100, system=100, idle=700, iowait=100, guest=10)
    probe = tree.probe()
    probe.sample()
    # 400 more jiffies, 150 of them busy; the guest jiffies are already in user.
    tree.proc_stat(user=200, system=150, idle=900, iowait=150, guest=60)
    tree.clock.now += 10
    sample = probe.sample()
    assert sample.cpu_percent == pytest.approx(37.5)
    assert sample.cpu_throttled_percent is None  # no quota, nothing to be throttled by


def test_cpu_percent_is_none_when_proc_stat_did_not_move(tree: Tree) -> None:
    tree.proc_stat(user=100, system=100, idle=700, iowait=100)
    probe = tree.probe()
    probe.sample()
    assert probe.sample().cpu_percent is None


def test_cpu_percent_is_cgroup_usage_over_its_quota(tree: Tree) -> None:
    tree.proc_stat(user=100, system=100, idle=700, iowait=100)
    app = tree.v2()
    tree.write(app / "cpu.max", "200000 100000\n")  # two cores
    tree.write(app / "cpu.stat", "usage_usec 1000000\nnr_periods 10\nnr_throttled 1\n")
    probe = tree.probe()
    assert probe.sample().cpu_percent is None
    # One CPU second in one wall second, against two cores; 5 of 10 periods throttled.
    tree.write(app / "cpu.stat", "usage_usec 2000000\nnr_periods 20\nnr_throttled 6\n")
    tree.proc_stat(user=1000, system=100, idle=700, iowait=100)  # the host's: not used
    tree.clock.now += 1
    sample = probe.sample()
    assert sample.cpu_percent == pytest.approx(50.0)
    assert sample.cpu_throttled_percent == pytest.approx(50.0)


def test_cpu_percent_is_clamped_to_100(tree: Tree) -> None:
    app = tree.v2()
    tree.write(app / "cpu.max", "100000 100000\n")
    tree.write(app / "cpu.stat", "usage_usec 0\nnr_periods 0\nnr_throttled 0\n")
    probe = tree.probe()
    probe.sample()
    tree.write(app / "cpu.stat", "usage_usec 3000000\nnr_periods 0\nnr_throttled 0\n")
    tree.clock.now += 1
    sample = probe.sample()
    assert sample.cpu_percent == 100.0
    assert sample.cpu_throttled_percent is None  # nr_periods did not move


def test_the_tightest_cpu_quota_up_the_hierarchy_applies(tree: Tree) -> None:
    app = tree.v2("/pod/app")
    tree.write(app / "cpu.max", "max 100000\n")
    tree.write(app / "cpu.stat", "usage_usec 0\n")
    pod = app.parent
    tree.write(pod / "cpu.max", "50000 100000\n")  # half a core for the pod
    tree.write(pod / "cpu.stat", "usage_usec 0\nnr_periods 0\nnr_throttled 0\n")
    probe = tree.probe()
    probe.sample()
    tree.write(pod / "cpu.stat", "usage_usec 250000\nnr_periods 10\nnr_throttled 1\n")
    tree.clock.now += 1
    sample = probe.sample()
    assert sample.cpu_percent == pytest.approx(50.0)
    assert sample.cpu_throttled_percent == pytest.approx(10.0)


def test_without_a_cpu_quota_the_host_figure_applies(tree: Tree) -> None:
    tree.proc_stat(user=0, system=0, idle=100, iowait=0)
    app = tree.v2()
    tree.write(app / "cpu.max", "max 100000\n")
    tree.write(app / "cpu.stat", "usage_usec 0\nnr_periods 0\nnr_throttled 0\n")
    probe = tree.probe()
    probe.sample()
    tree.proc_stat(user=25, system=25, idle=150, iowait=0)
    tree.write(app / "cpu.stat", "usage_usec 9000000\nnr_periods 0\nnr_throttled 0\n")
    tree.clock.now += 1
    assert probe.sample().cpu_percent == pytest.approx(50.0)


def test_cgroup_v1_quota_with_cpu_and_cpuacct_mounted_together(tree: Tree) -> None:
    app = tree.v1({"cpu,cpuacct": "cpu,cpuacct", "memory": "memory"})["cpu,cpuacct"]
    tree.write(app / "cpu.cfs_quota_us", "50000\n")
    tree.write(app / "cpu.cfs_period_us", "100000\n")
    tree.write(app / "cpuacct.usage", "0\n")
    tree.write(app / "cpu.stat", "nr_periods 100\nnr_throttled 0\nthrottled_time 0\n")
    probe = tree.probe()
    probe.sample()
    # A quarter of a CPU second in one wall second, against half a core.
    tree.write(app / "cpuacct.usage", "250000000\n")
    tree.write(app / "cpu.stat", "nr_periods 110\nnr_throttled 2\nthrottled_time 5\n")
    tree.clock.now += 1
    sample = probe.sample()
    assert sample.cpu_percent == pytest.approx(50.0)
    assert sample.cpu_throttled_percent == pytest.approx(20.0)


def test_cgroup_v1_quota_reads_usage_from_a_cpuacct_hierarchy_mounted_apart(tree: Tree) -> None:
    dirs = tree.v1({"cpu": "cpu", "cpuacct": "cpuacct"})
    tree.write(dirs["cpu"] / "cpu.cfs_quota_us", "100000\n")
    tree.write(dirs["cpu"] / "cpu.cfs_period_us", "100000\n")
    tree.write(dirs["cpuacct"] / "cpuacct.usage", "0\n")
    probe = tree.probe()
    probe.sample()
    tree.write(dirs["cpuacct"] / "cpuacct.usage", "500000000\n")
    tree.clock.now += 2
    sample = probe.sample()
    assert sample.cpu_percent == pytest.approx(25.0)
    assert sample.cpu_throttled_percent is None  # no cpu.stat


def test_v1_quota_of_minus_one_means_no_quota(tree: Tree) -> None:
    tree.proc_stat(user=0, system=0, idle=100, iowait=0)
    app = tree.v1({"cpu,cpuacct": "cpu,cpuacct"})["cpu,cpuacct"]
    tree.write(app / "cpu.cfs_quota_us", "-1\n")
    tree.write(app / "cpu.cfs_period_us", "100000\n")
    tree.write(app / "cpuacct.usage", "0\n")
    probe = tree.probe()
    probe.sample()
    tree.proc_stat(user=10, system=0, idle=190, iowait=0)
    tree.write(app / "cpuacct.usage", "900000000\n")
    tree.clock.now += 1
    assert probe.sample().cpu_percent == pytest.approx(10.0)


def test_a_cgroup_namespace_reads_the_mount_root(tree: Tree) -> None:
    # The process sees "/" (or a host path its mount does not have): its cgroup is the root.
    for path in ("/", "/kubepods/burstable/pod1/abc"):
        tree.write(tree.cgroup / "cgroup.controllers", "cpu memory\n")
        tree.write(tree.procfs / "self" / "cgroup", f"0::{path}\n")
        tree.write(tree.cgroup / "cpu.max", "100000 100000\n")
        tree.write(tree.cgroup / "cpu.stat", "usage_usec 0\nnr_periods 0\nnr_throttled 0\n")
        probe = tree.probe()
        probe.sample()
        tree.write(tree.cgroup / "cpu.stat", "usage_usec 400000\nnr_periods 4\nnr_throttled 0\n")
        tree.clock.now += 1
        sample = probe.sample()
        assert sample.cpu_percent == pytest.approx(40.0), path
        assert sample.cpu_throttled_percent == 0.0


def test_a_hybrid_host_reads_v2_files_under_unified(tree: Tree) -> None:
    app = tree.v2(unified=True)
    tree.write(app / "cpu.max", "100000 100000\n")
    tree.write(app / "cpu.stat", "usage_usec 0\n")
    probe = tree.probe()
    probe.sample()
    tree.write(app / "cpu.stat", "usage_usec 100000\n")
    tree.clock.now += 1
    assert probe.sample().cpu_percent == pytest.approx(10.0)


# --- memory ------------------------------------------------------------------------------


def test_memory_is_the_hosts_without_a_cgroup_limit(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    sample = tree.probe().sample()
    assert sample.memory_total_bytes == 16 * GIB
    assert sample.memory_available_bytes == 10 * GIB


def test_memory_under_a_v2_limit_counts_inactive_file_cache_as_available(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    app = tree.v2()
    tree.write(app / "memory.max", f"{2 * GIB}\n")
    tree.write(app / "memory.current", f"{3 * GIB // 2}\n")
    tree.write(app / "memory.stat", f"anon 1000\ninactive_file {GIB // 2}\nactive_file 7\n")
    sample = tree.probe().sample()
    assert sample.memory_total_bytes == 2 * GIB
    assert sample.memory_available_bytes == GIB  # 2 - (1.5 - 0.5)


def test_memory_available_under_a_limit_is_capped_by_the_hosts(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=256 * 1024)
    app = tree.v2()
    tree.write(app / "memory.max", f"{2 * GIB}\n")
    tree.write(app / "memory.current", f"{GIB}\n")
    tree.write(app / "memory.stat", "inactive_file 0\n")
    sample = tree.probe().sample()
    assert sample.memory_total_bytes == 2 * GIB
    assert sample.memory_available_bytes == GIB // 4


def test_memory_available_is_never_negative(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    app = tree.v2()
    tree.write(app / "memory.max", f"{GIB}\n")
    tree.write(app / "memory.current", f"{GIB + 4096}\n")
    tree.write(app / "memory.stat", "inactive_file 0\n")
    assert tree.probe().sample().memory_available_bytes == 0


def test_the_tightest_memory_limit_up_the_hierarchy_applies(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    app = tree.v2("/pod/app")
    tree.write(app / "memory.max", "max\n")
    tree.write(app / "memory.current", "1\n")
    tree.write(app / "memory.stat", "inactive_file 0\n")
    pod = app.parent
    tree.write(pod / "memory.max", f"{4 * GIB}\n")
    tree.write(pod / "memory.current", f"{GIB}\n")
    tree.write(pod / "memory.stat", "inactive_file 0\n")
    sample = tree.probe().sample()
    assert (sample.memory_total_bytes, sample.memory_available_bytes) == (4 * GIB, 3 * GIB)


def test_a_v2_limit_above_the_hosts_memory_is_ignored(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    app = tree.v2()
    tree.write(app / "memory.max", f"{32 * GIB}\n")
    tree.write(app / "memory.current", f"{GIB}\n")
    tree.write(app / "memory.stat", "inactive_file 0\n")
    assert tree.probe().sample().memory_total_bytes == 16 * GIB


def test_memory_under_a_v1_limit(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    app = tree.v1({"memory": "memory", "cpu,cpuacct": "cpu,cpuacct"})["memory"]
    tree.write(app / "memory.limit_in_bytes", f"{GIB}\n")
    tree.write(app / "memory.usage_in_bytes", f"{GIB // 2}\n")
    # A v1 memory.stat has both; the total_ one counts the cgroup's children too.
    tree.write(app / "memory.stat", f"inactive_file 0\ntotal_inactive_file {GIB // 4}\n")
    sample = tree.probe().sample()
    assert (sample.memory_total_bytes, sample.memory_available_bytes) == (GIB, 3 * GIB // 4)


def test_v1_no_limit_huge_value_is_ignored(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    app = tree.v1({"memory": "memory"})["memory"]
    tree.write(app / "memory.limit_in_bytes", V1_UNLIMITED + "\n")
    tree.write(app / "memory.usage_in_bytes", f"{GIB}\n")
    tree.write(app / "memory.stat", "total_inactive_file 0\n")
    sample = tree.probe().sample()
    assert (sample.memory_total_bytes, sample.memory_available_bytes) == (16 * GIB, 10 * GIB)


def test_a_v1_limit_at_or_above_the_hosts_memory_is_no_limit(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    app = tree.v1({"memory": "memory"})["memory"]
    tree.write(app / "memory.limit_in_bytes", f"{16 * GIB}\n")
    tree.write(app / "memory.usage_in_bytes", f"{GIB}\n")
    tree.write(app / "memory.stat", "total_inactive_file 0\n")
    sample = tree.probe().sample()
    assert (sample.memory_total_bytes, sample.memory_available_bytes) == (16 * GIB, 10 * GIB)


def test_unreadable_cgroup_memory_usage_falls_back_to_the_hosts(tree: Tree) -> None:
    tree.meminfo(total_kib=16 * 1024 * 1024, available_kib=10 * 1024 * 1024)
    app = tree.v2()
    tree.write(app / "memory.max", f"{2 * GIB}\n")
    tree.write(app / "memory.stat", "inactive_file 0\n")  # and no memory.current
    sample = tree.probe().sample()
    assert (sample.memory_total_bytes, sample.memory_available_bytes) == (16 * GIB, 10 * GIB)


# --- temperature, disk, uptime -----------------------------------------------------------


def test_temperature_is_the_hottest_plausible_thermal_zone(tree: Tree) -> None:
    thermal = tree.sysfs / "class" / "thermal"
    tree.write(thermal / "thermal_zone0" / "temp", "45000\n")
    tree.write(thermal / "thermal_zone1" / "temp", "71500\n")
    tree.write(thermal / "thermal_zone2" / "temp", "hot\n")  # malformed
    tree.write(thermal / "thermal_zone3" / "temp", "250000\n")  # a broken sensor
    (thermal / "thermal_zone4" / "temp").mkdir(parents=True)  # unreadable
    tree.write(thermal / "cooling_device0" / "temp", "99000\n")  # not a zone
    assert tree.probe().sample().temperature_celsius == pytest.approx(71.5)


def test_temperature_is_none_without_thermal_zones(tree: Tree) -> None:
    tree.write(tree.sysfs / "class" / "thermal" / "thermal_zone0" / "temp", "n/a\n")
    assert tree.probe().sample().temperature_celsius is None
    (tree.sysfs / "class" / "thermal" / "thermal_zone0" / "temp").unlink()
    assert tree.probe().sample().temperature_celsius is None


def test_disk_figures_are_statvfs_of_the_data_dir(tree: Tree) -> None:
    sample = tree.probe().sample()
    stat = os.statvfs(tree.data_dir)
    assert sample.disk_total_bytes == stat.f_blocks * stat.f_frsize
    # Free space moves under a busy machine: within 64 MiB of a statvfs taken just after.
    assert sample.disk_free_bytes is not None
    assert abs(sample.disk_free_bytes - stat.f_bavail * stat.f_frsize) < 64 << 20


def test_uptime_is_the_first_field_of_proc_uptime(tree: Tree) -> None:
    tree.write(tree.procfs / "uptime", "12258.93 10944.99\n")
    assert tree.probe().sample().uptime_seconds == pytest.approx(12258.93)


def test_missing_files_give_none_without_raising(tree: Tree, tmp_path: Path) -> None:
    probe = HealthProbe(tmp_path / "absent", procfs=tmp_path / "no-proc",
                        sysfs=tmp_path / "no-sys", clock=tree.clock)
    for _ in range(2):
        sample = probe.sample()
        assert set(vars(sample).values()) == {None}


def test_malformed_files_give_none_without_raising(tree: Tree) -> None:
    tree.write(tree.procfs / "stat", "intr 1 2 3\n")
    tree.write(tree.procfs / "meminfo", "MemTotal: lots\n")
    tree.write(tree.procfs / "uptime", "\n")
    tree.write(tree.procfs / "self" / "cgroup", "garbage\n0::\n")
    app = tree.cgroup
    tree.write(app / "cgroup.controllers", "")
    tree.write(app / "cpu.max", "200000\n")
    tree.write(app / "memory.max", "-5\n")
    probe = tree.probe()
    probe.sample()
    sample = probe.sample()
    assert sample.cpu_percent is None and sample.memory_total_bytes is None
    assert sample.memory_available_bytes is None and sample.uptime_seconds is None


def test_a_failing_figure_is_logged_once(tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    probe = tree.probe()
    with caplog.at_level(logging.DEBUG, logger="edgefleet.edge_runtime.health"):
        for _ in range(3):
            probe.sample()
    memory = [record for record in caplog.records if "memory" in record.getMessage()]
    assert len(memory) == 1


# --- this machine ------------------------------------------------------------------------


def test_this_machines_figures_are_plausible(tmp_path: Path) -> None:
    probe = HealthProbe(tmp_path)
    probe.sample()
    time.sleep(0.2)  # long enough for the jiffies of /proc/stat to move
    sample = probe.sample()
    assert sample.memory_total_bytes is not None and sample.memory_total_bytes > 0
    assert sample.memory_available_bytes is not None
    assert 0 <= sample.memory_available_bytes <= sample.memory_total_bytes
    assert sample.cpu_percent is not None and 0 <= sample.cpu_percent <= 100
    assert sample.disk_free_bytes is not None and sample.disk_total_bytes is not None
    assert 0 <= sample.disk_free_bytes <= sample.disk_total_bytes
    assert sample.uptime_seconds is not None and sample.uptime_seconds > 0
