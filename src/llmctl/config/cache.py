"""The cache around the config pipeline (llmctl.config.load): validated configs, keyed by what
validation depends on.

Validating instances.yaml with the schema costs ~200 ms (PyYAML, pydantic building its validators);
`llmctl up` when everything already runs should cost less than that in all. The schema's verdict
depends only on the file's bytes, its path (relative paths resolve against its folder), the values
of the environment variables it references and llmctl's version (and its schema's source files, for
an editable install): with those unchanged, the last
validated config is reused. The backend checks that look at the file system (does the GGUF exist?)
run every time; when one fails, the full loader runs to report it with its line.

Only valid configs are cached, in the state folder (0700), one small JSON file per key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from llmctl import __version__
from llmctl.config.read import MAX_CONFIG_BYTES, read_config
from llmctl.errors import ConfigError
from llmctl.spec import Config
from llmctl.system.files import read_regular_file

_REFERENCE = re.compile(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)")
MAX_ENTRIES = 8


def cache_folder() -> Path:
    from llmctl.paths import StatePaths

    return StatePaths.default().root / "config-cache"


# Relative to the llmctl package. config/load.py holds the loader that config/schema.py held before the split.
SCHEMA_SOURCES = ("config/schema.py", "config/prep.py", "spec.py", "config/load.py")


def _schema_stamp() -> bytes:
    """When the schema's own source last changed: an editable install changes it without a new version."""
    package = Path(__file__).parent.parent
    stamps = []
    for name in SCHEMA_SOURCES:
        with contextlib.suppress(OSError):
            stamps.append(str(os.stat(package / name).st_mtime_ns))
    return ",".join(stamps).encode()


def cache_key(path: Path, content: bytes) -> str:
    digest = hashlib.sha256()
    for part in (__version__.encode(), _schema_stamp(), os.fsencode(path), content):
        digest.update(len(part).to_bytes(8, "little") + part)
    for name in sorted(set(_REFERENCE.findall(content))):
        value = os.environ.get(name.decode())
        digest.update(name + b"=" + (b"\0unset" if value is None else value.encode("utf-8", "surrogateescape")) + b"\n")
    return digest.hexdigest()[:32]


def load_config_cached(path: Path, folder: Path | None = None) -> Config:
    """The validated config at `path`, from the cache when nothing it depends on changed."""
    text = read_config(path)  # read once: the key and, on a miss, the pipeline's next step use the same text
    folder = folder or cache_folder()
    entry = folder / f"{cache_key(path, text.encode('utf-8'))}.json"
    cached = _cached(entry)
    if cached is not None and _backend_checks_pass(cached):
        return cached
    config = _validated(text, path)
    _store(folder, entry, config)
    return config


def _validated(text: str, path: Path) -> Config:
    from llmctl.config.load import parse_config  # pydantic and YAML: only when the cache cannot answer

    return parse_config(text, path)


def _cached(entry: Path) -> Config | None:
    from llmctl.errors import SupervisorError
    from llmctl.paths import private_dir

    try:
        private_dir(entry.parent)  # a folder someone else can write to could hand us any config
        return Config.from_dict(json.loads(read_regular_file(entry, MAX_CONFIG_BYTES)))
    except (OSError, ValueError, TypeError, KeyError, SupervisorError):
        return None


def _backend_checks_pass(config: Config) -> bool:
    from llmctl.backends import backend_for

    try:
        return all(backend_for(spec.backend).check_spec(spec) is None for spec in config.instances)
    except (ValueError, ConfigError):
        return False


def _store(folder: Path, entry: Path, config: Config) -> None:
    from llmctl.errors import SupervisorError
    from llmctl.paths import private_dir
    from llmctl.system.files import write_atomically

    with contextlib.suppress(OSError, SupervisorError):  # no cache is slower, never wrong
        private_dir(folder)
        write_atomically(entry, json.dumps(config.to_dict()))
        entries = sorted(folder.glob("*.json"), key=lambda item: item.stat().st_mtime)
        for stale in entries[:-MAX_ENTRIES]:
            stale.unlink()
