"""The device's health figures: CPU, memory, disk, temperature and uptime, read straight
from procfs and sysfs (no psutil: it would be one more native wheel on every device).

Inside a container with CPU or memory limits the host's figures mislead (a pod capped at
one core reads 5% busy on a 16-core host while it is throttled), so where a cgroup (v2,
or v1 on hybrid and older hosts) limits this process, the CPU and memory figures are
relative to that limit. Every figure fails soft: a file that is missing, unreadable or
malformed makes its figure None (a cgroup figure falls back to the host's), logged at
DEBUG once per figure, and `HealthProbe.sample` never raises.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# cgroup v1 writes "no limit" as a huge page-rounded number; with MemTotal unknown, a value
# below this still counts as a limit.
V1_NO_LIMIT = 1 << 60
# Thermal zones outside this range in °C are broken sensors, not readings.
PLAUSIBLE_CELSIUS = (-100.0, 200.0)
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal guest guest_nice.
# guest and guest_nice are already counted in user and nice, so the total stops at steal.
STAT_TOTAL_FIELDS = 8
STAT_IDLE, STAT_IOWAIT = 3, 4


@dataclass(frozen=True)
class HealthSample:
    # CPU used since the previous sample, % of the CPU this runtime may use (its cgroup's
    # quota, else the whole host); None on the first sample or when unreadable.
    cpu_percent: float | None
    # % of CFS periods throttled since the previous sample (cgroup with a CPU quota only).
    cpu_throttled_percent: float | None
    memory_available_bytes: int | None
    memory_total_bytes: int | None
    disk_free_bytes: int | None  # of the filesystem holding data_dir, for unprivileged users
    disk_total_bytes: int | None
    temperature_celsius: float | None  # the hottest thermal zone
    uptime_seconds: float | None  # the host's


@dataclass(frozen=True)
class _CpuQuota:
    version: int  # 1 or 2
    quota_dir: Path  # holds the quota and cpu.stat (nr_periods, nr_throttled)
    usage_dir: Path  # holds the usage: the same directory but for v1 with cpuacct apart


@dataclass(frozen=True)
class _MemoryLimit:
    version: int
    directory: Path


@dataclass(frozen=True)
class _CpuReading:
    # One formula for both sources: percent = Δbusy / (cores * Δspan) * 100. A cgroup
    # reading counts CPU seconds over clock seconds against its quota in cores; the
    # host's counts busy jiffies over all jiffies (cores 1: the share of every CPU).
    source: Path | None  # the cgroup directory read, None for the host's procfs/stat
    busy: float
    span: float
    cores: float
    periods: int | None = None
    throttled: int | None = None


def _keyed(text: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.stat, meminfo without its units); lines that
    do not parse are skipped."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                values[parts[0].rstrip(":")] = int(parts[1])
            except ValueError:
                continue
    return values


def _chain(mount: Path, cgroup_path: str) -> list[Path]:
    """The directories from the process's cgroup up to the hierarchy's mount root. In a
    container with a cgroup namespace (or with the host's cgroup paths but its own cgroup
    mounted as the root) the computed directory is not there: the mount root is it."""
    parts = [part for part in PurePosixPath(cgroup_path).parts if part != "/"]
    own = mount.joinpath(*parts)
    if ".." in parts or not os.path.isdir(own):
        return [mount]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _tightest(limits: list[tuple[float, Path]]) -> Path:
    """The directory of the lowest limit, given own cgroup first; on a tie the one nearer
    the root, whose usage includes the others'."""
    return min(reversed(limits), key=lambda limit: limit[0])[1]


def _discover(procfs: Path, sysfs: Path) -> tuple[list[Path], dict[str, list[Path]]]:
    """The v2 chain (empty without a unified hierarchy) and a v1 chain per controller, from
    procfs/self/cgroup."""
    root = sysfs / "fs" / "cgroup"
    try:
        lines = (procfs / "self" / "cgroup").read_text().splitlines()
    except (OSError, ValueError) as err:
        logger.debug("no cgroup membership, host figures only: %s", err)
        return [], {}
    v2: list[Path] = []
    v1: dict[str, list[Path]] = {}
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:
            # A hybrid host mounts the unified hierarchy at .../unified.
            unified = root if os.path.exists(root / "cgroup.controllers") else root / "unified"
            if os.path.isdir(unified):
                v2 = _chain(unified, path)
            continue
        names = [name for name in controllers.split(",") if name and "=" not in name]
        for name in names:
            candidates = [controllers, name]
            if name in ("cpu", "cpuacct"):
                candidates += ["cpu,cpuacct", "cpuacct,cpu"]
            mount = next((root / c for c in candidates if os.path.isdir(root / c)), None)
            if mount is not None:
                v1[name] = _chain(mount, path)
    return v2, v1


class HealthProbe:
    def __init__(self, data_dir: Path, *, procfs: Path = Path("/proc"),
                 sysfs: Path = Path("/sys"), clock: Callable[[], float] = time.monotonic) -> None:
        self._data_dir = data_dir
        self._procfs = procfs
        self._clock = clock
        self._noted: set[str] = set()  # figures whose failure was logged already
        self._previous: _CpuReading | None = None
        # cgroups and thermal zones do not move while the runtime runs: found once here,
        # so that a sample is a handful of small reads.
        self._cpu_quota: _CpuQuota | None = None
        self._memory_limit: _MemoryLimit | None = None
        self._zones: list[Path] = []
        try:
            v2, v1 = _discover(procfs, sysfs)
            self._cpu_quota = self._find_cpu_quota(v2, v1)
            self._memory_limit = self._find_memory_limit(v2, v1)
        except OSError as err:  # a path check that PermissionError escaped
            logger.debug("cgroup discovery failed, host figures only: %s", err)
        try:
            self._zones = sorted(zone / "temp" for zone in
                                 (sysfs / "class" / "thermal").glob("thermal_zone*"))
        except OSError as err:
            logger.debug("no thermal zones: %s", err)

    # --- discovery ---------------------------------------------------------------------

    def _v2_cores(self, directory: Path, figure: str | None) -> float | None:
        text = self._read(directory / "cpu.max", figure)
        if text is None:
            return None
        fields = text.split()
        if len(fields) != 2 or fields[0] == "max":
            return None
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None

    def _v1_cores(self, directory: Path, figure: str | None) -> float | None:
        quota_text = self._read(directory / "cpu.cfs_quota_us", figure)
        period_text = self._read(directory / "cpu.cfs_period_us", figure)
        if quota_text is None or period_text is None:
            return None
        try:
            quota, period = int(quota_text), int(period_text)
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None

    def _find_cpu_quota(self, v2: list[Path], v1: dict[str, list[Path]]) -> _CpuQuota | None:
        """The cgroup with the tightest CPU quota from the process's own up to the root:
        its usage is what the quota throttles."""
        found = [(cores, d) for d in v2 if (cores := self._v2_cores(d, None)) is not None]
        if found:
            directory = _tightest(found)
            return _CpuQuota(2, directory, directory)
        chain = v1.get("cpu", [])
        found = [(cores, d) for d in chain if (cores := self._v1_cores(d, None)) is not None]
        if not found:
            return None
        directory = _tightest(found)
        if os.path.exists(directory / "cpuacct.usage"):  # cpu and cpuacct mounted together
            return _CpuQuota(1, directory, directory)
        # Mounted apart: the same cgroup in the cpuacct hierarchy, else the process's own.
        accounting = v1.get("cpuacct", [])
        usage_dir = accounting[0] if accounting else directory
        if accounting:
            same = accounting[-1] / directory.relative_to(chain[-1])
            usage_dir = same if os.path.isdir(same) else usage_dir
        return _CpuQuota(1, directory, usage_dir)

    def _find_memory_limit(self, v2: list[Path],
                           v1: dict[str, list[Path]]) -> _MemoryLimit | None:
        """The cgroup with the tightest memory limit from the process's own up to the root
        (whether it is below MemTotal is checked at each sample)."""
        for version, chain, name in ((2, v2, "memory.max"),
                                     (1, v1.get("memory", []), "memory.limit_in_bytes")):
            limits: list[tuple[float, Path]] = []
            for directory in chain:
                text = self._read(directory / name, None)
                # v1's "no limit" is dropped here, sparing a read per sample on most hosts.
                if text is not None and text.strip().isdigit() and int(text) < V1_NO_LIMIT:
                    limits.append((int(text), directory))
            if limits:
                return _MemoryLimit(version, _tightest(limits))
        return None

    # --- reads -------------------------------------------------------------------------

    def _note(self, figure: str, message: str, *args: object) -> None:
        if figure not in self._noted:
            self._noted.add(figure)
            logger.debug("health %s: " + message, figure, *args)

    def _read(self, path: Path, figure: str | None) -> str | None:
        """The file's text; None, logged once for `figure` (quietly without one: discovery
        expects misses), when it cannot be read."""
        try:
            # Unbuffered bytes: a text-mode open costs about as much as the read itself.
            with open(path, "rb", buffering=0) as file:
                return file.read().decode()
        except (OSError, ValueError) as err:  # ValueError: not UTF-8
            if figure is not None:
                self._note(figure, "cannot read %s: %s", path, err)
            return None

    def _guarded(self, figure: str, compute: Callable[[], T]) -> T | None:
        # A backstop, every read already fails soft: a bug here must not stop heartbeats.
        try:
            return compute()
        except Exception as err:
            self._note(figure, "failed: %r", err)
            return None

    # --- figures -----------------------------------------------------------------------

    def _cgroup_cpu(self, quota: _CpuQuota) -> _CpuReading | None:
        if quota.version == 2:
            cores = self._v2_cores(quota.quota_dir, "cpu")
            stat_text = self._read(quota.quota_dir / "cpu.stat", "cpu")
            stat = _keyed(stat_text) if stat_text is not None else {}
            usage_s = stat["usage_usec"] / 1e6 if "usage_usec" in stat else None
        else:
            cores = self._v1_cores(quota.quota_dir, "cpu")
            usage_text = self._read(quota.usage_dir / "cpuacct.usage", "cpu")
            stat_text = self._read(quota.quota_dir / "cpu.stat", "cpu")
            stat = _keyed(stat_text) if stat_text is not None else {}
            try:
                usage_s = int(usage_text) / 1e9 if usage_text is not None else None
            except ValueError:
                usage_s = None
        if cores is None or usage_s is None:
            return None  # the quota went, or its files cannot be read: the host's figure
        return _CpuReading(quota.quota_dir, usage_s, self._clock(), cores,
                           stat.get("nr_periods"), stat.get("nr_throttled"))

    def _host_cpu(self) -> _CpuReading | None:
        text = self._read(self._procfs / "stat", "cpu")
        if text is None:
            return None
        fields = text.split("\n", 1)[0].split()
        if not fields or fields[0] != "cpu" or len(fields) <= STAT_IOWAIT + 1:
            self._note("cpu", "malformed first line of %s", self._procfs / "stat")
            return None
        try:
            jiffies = [int(field) for field in fields[1:STAT_TOTAL_FIELDS + 1]]
        except ValueError:
            self._note("cpu", "malformed first line of %s", self._procfs / "stat")
            return None
        total = sum(jiffies)
        return _CpuReading(None, total - jiffies[STAT_IDLE] - jiffies[STAT_IOWAIT], total, 1.0)

    def _cpu(self) -> tuple[float | None, float | None]:
        reading = self._cgroup_cpu(self._cpu_quota) if self._cpu_quota else None
        reading = reading or self._host_cpu()
        previous, self._previous = self._previous, reading
        if reading is None or previous is None or previous.source != reading.source:
            return None, None
        span = reading.span - previous.span
        percent: float | None = None
        if span > 0:
            used = (reading.busy - previous.busy) / (reading.cores * span) * 100
            percent = min(100.0, max(0.0, used))
        throttled: float | None = None
        if (reading.periods is not None and reading.throttled is not None
                and previous.periods is not None and previous.throttled is not None
                and reading.periods > previous.periods):
            share = ((reading.throttled - previous.throttled)
                     / (reading.periods - previous.periods) * 100)
            throttled = min(100.0, max(0.0, share))
        return percent, throttled

    def _cgroup_memory(self, limit: _MemoryLimit,
                       host_total: int | None) -> tuple[int, int] | None:
        """(limit, bytes in use but reclaimable page cache) when the cgroup's limit is below
        the host's memory, else None."""
        if limit.version == 2:
            names = ("memory.max", "memory.current", "inactive_file")
        else:
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        limit_text = self._read(limit.directory / names[0], "memory")
        if limit_text is None or not limit_text.strip().isdigit():
            return None  # "max", or unreadable
        bytes_limit = int(limit_text)
        if bytes_limit >= (host_total if host_total is not None else V1_NO_LIMIT):
            return None
        usage_text = self._read(limit.directory / names[1], "memory")
        stat_text = self._read(limit.directory / "memory.stat", "memory")
        if usage_text is None or stat_text is None or not usage_text.strip().isdigit():
            return None
        inactive = _keyed(stat_text).get(names[2])
        if inactive is None:
            self._note("memory", "no %s in %s", names[2], limit.directory / "memory.stat")
            return None
        return bytes_limit, int(usage_text) - inactive

    def _memory(self) -> tuple[int | None, int | None]:
        """(available, total) in bytes."""
        text = self._read(self._procfs / "meminfo", "memory")
        meminfo = _keyed(text) if text is not None else {}
        total = meminfo["MemTotal"] * 1024 if "MemTotal" in meminfo else None
        available = meminfo["MemAvailable"] * 1024 if "MemAvailable" in meminfo else None
        cgroup = self._cgroup_memory(self._memory_limit, total) if self._memory_limit else None
        if cgroup is None:
            return available, total
        limit, used = cgroup
        # Page cache that counts against the limit is reclaimable; the host can run short first.
        left = max(0, limit - used)
        return (min(left, available) if available is not None else left), limit

    def _disk(self) -> tuple[int | None, int | None]:
        """(free for unprivileged users, total) in bytes."""
        try:
            stat = os.statvfs(self._data_dir)
        except OSError as err:
            self._note("disk", "cannot statvfs %s: %s", self._data_dir, err)
            return None, None
        return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize

    def _temperature(self) -> float | None:
        hottest: float | None = None
        for path in self._zones:
            text = self._read(path, "temperature")
            try:
                celsius = int(text) / 1000 if text is not None else None
            except ValueError:
                self._note("temperature", "not an integer in %s", path)
                continue
            low, high = PLAUSIBLE_CELSIUS
            if celsius is not None and low <= celsius <= high:
                hottest = celsius if hottest is None else max(hottest, celsius)
        return hottest

    def _uptime(self) -> float | None:
        text = self._read(self._procfs / "uptime", "uptime")
        try:
            return float(text.split()[0]) if text is not None else None
        except (IndexError, ValueError):
            self._note("uptime", "malformed %s", self._procfs / "uptime")
            return None

    def sample(self) -> HealthSample:
        """The figures now; CPU figures cover the time since the previous call."""
        cpu, throttled = self._guarded("cpu", self._cpu) or (None, None)
        available, total = self._guarded("memory", self._memory) or (None, None)
        free, size = self._guarded("disk", self._disk) or (None, None)
        return HealthSample(
            cpu_percent=cpu, cpu_throttled_percent=throttled,
            memory_available_bytes=available, memory_total_bytes=total,
            disk_free_bytes=free, disk_total_bytes=size,
            temperature_celsius=self._guarded("temperature", self._temperature),
            uptime_seconds=self._guarded("uptime", self._uptime))
