"""A standalone model repository: DIR/<model>/<version>/model.onnx, with an optional
DIR/<model>/config.json (edge_runtime/config.py: ModelConfig).

`scan` reads the directory; `RepositorySync` makes the engine serve what it holds:
new versions are loaded and warmed before routing sends them traffic, removed ones
are unloaded after their requests drain. Polled, that is hot swap. A version's file is
immutable once loaded; a new version is a new directory.

It is also the inference protocol's model repository: the index lists every version
on disk with its state, a load serves a model at once (and again after an unload), and
an unload stops serving it until the next load, polling or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edgefleet.edge_runtime.config import ModelConfig
from edgefleet.edge_runtime.engine import Engine
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.serving.dataplane import RepositoryEntry

logger = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ModelConfig
    # version -> (path, (mtime_ns, size)): a changed file is a new load
    versions: dict[str, tuple[Path, tuple[int, int]]]

    def weights(self) -> dict[str, float]:
        """Who takes unpinned requests: configured weights, else the default version,
        else the highest version (numerically when versions are numbers)."""
        if self.config.version_weights:
            return {v: w for v, w in self.config.version_weights.items() if v in self.versions}
        if self.config.default_version:
            return {self.config.default_version: 1.0}
        newest = max(self.versions, key=lambda v: (v.isdigit(), int(v) if v.isdigit() else 0, v))
        return {newest: 1.0}


def scan(root: Path) -> tuple[dict[str, ModelEntry], dict[str, str]]:
    """What the repository holds, and a problem line for each model directory (by its
    name) it cannot serve."""
    entries: dict[str, ModelEntry] = {}
    problems: dict[str, str] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        name = model_dir.name
        if not NAME_PATTERN.match(name):
            problems[name] = f"{model_dir}: not a valid model name"
            continue
        config = ModelConfig()
        config_path = model_dir / CONFIG_FILE
        if config_path.exists():
            try:
                config = ModelConfig.model_validate(json.loads(config_path.read_text()))
            except (ValueError, ValidationError) as error:
                problems[name] = f"{config_path}: {error}"
                continue
        versions = {}
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            model_file = version_dir / MODEL_FILE
            if NAME_PATTERN.match(version_dir.name) and model_file.is_file():
                stat = model_file.stat()
                versions[version_dir.name] = (model_file, (stat.st_mtime_ns, stat.st_size))
        if not versions:
            problems[name] = f"{model_dir}: no <version>/{MODEL_FILE}"
            continue
        unknown = [v for v in (config.version_weights or {config.default_version: 1})
                   if v is not None and v not in versions]
        if unknown:
            problems[name] = f"{config_path}: names versions that are not there: {unknown}"
            continue
        entries[name] = ModelEntry(name, config, versions)
    return entries, problems


class RepositorySync:
    def __init__(self, engine: Engine, root: Path, poll_seconds: float = 0) -> None:
        self.engine = engine
        self.root = root
        self.poll_seconds = poll_seconds
        self._loaded: dict[tuple[str, str], tuple[int, int]] = {}
        self._reported: set[str] = set()
        self._warned: set[tuple[str, str, tuple[int, int]]] = set()
        # Why a version on disk does not serve: its last load's error.
        self._failures: dict[tuple[str, str], str] = {}
        self._unloaded: set[str] = set()  # unloaded by request: not served until loaded
        self._lock = asyncio.Lock()  # a poll, a load and an unload never interleave

    async def sync(self) -> None:
        async with self._lock:
            entries, problems = await asyncio.to_thread(scan, self.root)
            for problem in problems.values():
                if problem not in self._reported:  # say it once, not at every poll
                    logger.error("repository: %s", problem)
            self._reported = set(problems.values())
            for entry in entries.values():
                if entry.name in self._unloaded:
                    await self._retire(entry.name, set(self.engine.versions(entry.name)))
                else:
                    await self._serve(entry)
            for name in self.engine.models():
                if name not in entries and name not in problems:
                    await self._retire(name, set(self.engine.versions(name)))

    async def index(self) -> list[RepositoryEntry]:
        entries, problems = await asyncio.to_thread(scan, self.root)
        index = []
        for name, entry in entries.items():
            for version in entry.versions:
                if version in self.engine.versions(name):
                    index.append(RepositoryEntry(name, version, "READY"))
                elif name in self._unloaded:
                    index.append(RepositoryEntry(name, version, "UNAVAILABLE", "unloaded"))
                else:
                    reason = self._failures.get((name, version), "not loaded yet")
                    index.append(RepositoryEntry(name, version, "UNAVAILABLE", reason))
        for name, problem in problems.items():  # a model directory that cannot serve at all
            if NAME_PATTERN.match(name):
                index.append(RepositoryEntry(name, "", "UNAVAILABLE", problem))
        return sorted(index, key=lambda e: (e.name, e.version))

    async def load(self, name: str) -> None:
        async with self._lock:
            entries, problems = await asyncio.to_thread(scan, self.root)
            entry = entries.get(name)
            if entry is None:
                if name in problems:
                    raise InferenceError.invalid(f"model {name!r} cannot load: "
                                                 f"{problems[name]}")
                raise InferenceError.not_found(f"model {name!r} is not in the repository")
            self._unloaded.discard(name)
            await self._serve(entry)
            if not self.engine.is_ready(name, None):
                reasons = [f"{version}: {self._failures[(name, version)]}"
                           for version in entry.versions if (name, version) in self._failures]
                raise InferenceError.invalid(f"model {name!r} did not load: "
                                             f"{'; '.join(reasons) or 'no version it routes to'}")

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self.engine.models():
                entries, _ = await asyncio.to_thread(scan, self.root)
                if name not in entries:
                    raise InferenceError.not_found(f"model {name!r} is not in the repository")
            self._unloaded.add(name)
            await self._retire(name, set(self.engine.versions(name)))
            logger.info("repository: model=%s unloaded by request; a load serves it again",
                        name)

    async def _serve(self, entry: ModelEntry) -> None:
        for version, (path, stamp) in entry.versions.items():
            seen = self._loaded.get((entry.name, version))
            if seen == stamp:
                continue
            if seen is not None:
                if (entry.name, version, stamp) not in self._warned:
                    self._warned.add((entry.name, version, stamp))
                    logger.warning("repository: %s changed after it was loaded; versions are "
                                   "immutable, add a new version directory instead", path)
                continue
            try:
                await self.engine.load(entry.name, version, path, entry.config.runtime,
                                       warmup=entry.config.warmup)
            except InferenceError as error:  # the versions already serving keep serving
                logger.error("repository: %s", error.message)
                self._failures[(entry.name, version)] = error.message
                continue
            self._failures.pop((entry.name, version), None)
            self._loaded[(entry.name, version)] = stamp
        weights = {v: w for v, w in entry.weights().items()
                   if v in self.engine.versions(entry.name)}
        if not weights:  # nothing it asks for could load: what serves keeps serving
            logger.error("repository: model %s: no version it routes to is loaded; keeping "
                         "%s", entry.name, self.engine.routes(entry.name) or "nothing")
            return
        if weights != self.engine.routes(entry.name):
            self.engine.route(entry.name, weights)
            logger.info("routing model=%s weights=%s", entry.name, weights)
        await self._retire(entry.name, set(self.engine.versions(entry.name)) - set(entry.versions))

    async def _retire(self, name: str, versions: set[str]) -> None:
        for version in sorted(versions):
            self._loaded.pop((name, version), None)
            await self.engine.unload(name, version)

    async def start(self) -> None:
        await self.sync()

    async def run(self) -> None:
        """Re-reads the repository every poll_seconds (never, if 0)."""
        while self.poll_seconds:
            await asyncio.sleep(self.poll_seconds)
            await self.sync()
