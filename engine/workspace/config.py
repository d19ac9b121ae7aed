"""The configuration file: which databases are replicated where, and where restored copies live.

    data_dir = "./walrewind-data"          # restored databases + catalog live here
    [databases.production-db]
    path = "/var/lib/app/prod.db"
    replica = "s3://backups/prod?endpoint=http://127.0.0.1:8333"
    retention = "7d"                       # "off": never delete (lifecycle rules / no delete permission)
    keep_daily = 7                         # snapshots kept beyond the window (0 disables a tier)
    keep_weekly = 4
    keep_monthly = 12

Found at ``--config FILE``, else ``$WALREWIND_CONFIG``, else ``./walrewind.toml``, else
``~/.config/walrewind/config.toml`` (``$XDG_CONFIG_HOME`` respected).  ``${NAME}`` in any string
value is replaced by the environment variable NAME (unset is an error; ``$${`` is a literal ``${``).
Relative paths (``data_dir``, ``path``, ``state_dir``, a plain-path ``replica``) are relative to
the directory holding the config file, so the file means the same thing from any working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

import tomllib

from .. import defaults
from ..errors import ConfigError, InvalidName
from ..maintenance.retention import RetentionPolicy
from ..timeparse import parse_duration_or_off, parse_duration_us

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
CONFIG_NAME = defaults.CONFIG_NAME
_ENV_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_TOP_KEYS = {"data_dir", "databases"}
_DB_KEYS = {
    "path", "replica", "retention", "state_dir", "upload_interval", "checkpoint_frames", "max_wal_mb",
    "keep_daily", "keep_weekly", "keep_monthly",
    "snapshot_interval", "snapshot_volume", "compact_after", "verify_interval",
}
TIER_KEYS = ("keep_daily", "keep_weekly", "keep_monthly")


def validate_name(name: str) -> str:
    """Database names become file names: letters, digits, '-' and '_' only, no path separators."""
    if not NAME_RE.fullmatch(name or ""):
        raise InvalidName(
            f"Invalid database name {name!r}: use 1-64 letters, digits, '-' or '_', starting with a letter or "
            "digit (no spaces, dots or path separators)"
        )
    return name


@dataclass
class DatabaseConfig:
    """One replicated database's settings; every default comes from engine/defaults.py."""

    name: str
    path: str
    replica: str
    # Retention (engine/maintenance/retention.py): every moment of the last `retention` stays
    # restorable to the transaction; beyond it, GFS tiers of snapshots.  retention_us None = "off".
    retention: str = defaults.RETENTION
    retention_us: int | None = field(default_factory=lambda: parse_duration_or_off(defaults.RETENTION))
    keep_daily: int = defaults.KEEP_DAILY
    keep_weekly: int = defaults.KEEP_WEEKLY
    keep_monthly: int = defaults.KEEP_MONTHLY
    state_dir: str | None = None
    upload_interval: float = defaults.UPLOAD_INTERVAL_SECONDS
    checkpoint_frames: int = defaults.CHECKPOINT_FRAMES
    max_wal_mb: int = defaults.MAX_WAL_MB
    # Maintenance scheduler settings (engine/maintenance/scheduler.py).
    snapshot_interval_us: int = field(default_factory=lambda: parse_duration_us(defaults.SNAPSHOT_INTERVAL))
    snapshot_volume: float = defaults.SNAPSHOT_VOLUME  # snapshot when shipped bytes > this x db size; 0 = off
    compact_after_us: int = field(default_factory=lambda: parse_duration_us(defaults.COMPACT_AFTER))
    verify_interval_us: int | None = field(default_factory=lambda: parse_duration_or_off(defaults.VERIFY_INTERVAL))

    def retention_policy(self) -> RetentionPolicy:
        """The RetentionPolicy this database's settings describe (engine/retention.py)."""
        return RetentionPolicy(self.retention_us, self.keep_daily, self.keep_weekly, self.keep_monthly)

    @property
    def replica_display(self) -> str:
        """The replica URL without any ACCESS_KEY:SECRET@ part (safe for messages and the catalog)."""
        return redact_url(self.replica)


def redact_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme and "@" in parsed.netloc:
        return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
    return url


@dataclass
class Config:
    path: str | None  # the file this came from (None: no file, nothing configured)
    data_dir: str
    databases: dict[str, DatabaseConfig] = field(default_factory=dict)

    @property
    def catalog_path(self) -> str:
        return os.path.join(self.data_dir, "catalog.db")

    @property
    def databases_dir(self) -> str:
        return os.path.join(self.data_dir, "databases")

    def restored_path(self, name: str) -> str:
        return os.path.join(self.databases_dir, validate_name(name) + ".db")


def search_paths(environ=None) -> list[str]:
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [os.path.abspath(CONFIG_NAME), os.path.join(xdg, "walrewind", "config.toml")]


def find_config(explicit: str | None = None, environ=None) -> str | None:
    """The config file to use, or None when there is none (explicit choices must exist)."""
    environ = os.environ if environ is None else environ
    for chosen, how in ((explicit, "--config"), (environ.get("WALREWIND_CONFIG"), "WALREWIND_CONFIG")):
        if chosen:
            if not os.path.isfile(chosen):
                raise ConfigError(f"config file {chosen} (from {how}) does not exist")
            return os.path.abspath(chosen)
    for candidate in search_paths(environ):
        if os.path.isfile(candidate):
            return candidate
    return None


def not_found_message() -> str:
    return (
        "no config file found (looked for " + " and ".join(search_paths()) + "; or pass --config FILE / set "
        "WALREWIND_CONFIG). A minimal one:\n\n"
        '    data_dir = "./walrewind-data"\n'
        "    [databases.app]\n"
        '    path = "/path/to/app.db"\n'
        '    replica = "file:///path/to/backups/app"\n'
    )


def _expand(value, where: str, environ):
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(0) == "$${":
                return "${"
            name = m.group(1)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ConfigError(f"{where}: invalid environment reference ${{{name}}}")
            if name not in environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return environ[name]

        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", environ) for i, v in enumerate(value)]
    return value


def _resolve_path(base: str, value: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _resolve_replica(base: str, url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme in ("file", "s3") or (parsed.scheme and len(parsed.scheme) > 1):
        return url
    return _resolve_path(base, url)


def load_config(path: str, environ=None) -> Config:
    environ = os.environ if environ is None else environ
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    base = os.path.dirname(path)
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)} (top level knows: data_dir, [databases.NAME])"
        )
    data_dir = _expand(raw.get("data_dir", defaults.DATA_DIR), "data_dir", environ)
    if not isinstance(data_dir, str) or not data_dir:
        raise ConfigError(f"{path}: data_dir must be a directory path")
    config = Config(path, _resolve_path(base, data_dir))
    databases = raw.get("databases", {})
    if not isinstance(databases, dict):
        raise ConfigError(f"{path}: 'databases' must be tables like [databases.NAME]")
    for name, settings in databases.items():
        where = f"{path}: [databases.{name}]"
        try:
            validate_name(name)
        except InvalidName as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not isinstance(settings, dict):
            raise ConfigError(f"{where} must be a table with path and replica")
        unknown = sorted(set(settings) - _DB_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(_DB_KEYS))})")
        settings = _expand(settings, f"databases.{name}", environ)
        for required in ("path", "replica"):
            if not isinstance(settings.get(required), str) or not settings[required]:
                raise ConfigError(f"{where}: '{required}' is required (a string)")
        db = DatabaseConfig(name, _resolve_path(base, settings["path"]), _resolve_replica(base, settings["replica"]))
        _apply_maintenance(db, settings, where)
        if settings.get("state_dir") is not None:
            db.state_dir = _resolve_path(base, str(settings["state_dir"]))
        try:
            db.upload_interval = float(settings.get("upload_interval", defaults.UPLOAD_INTERVAL_SECONDS))
            db.checkpoint_frames = int(settings.get("checkpoint_frames", defaults.CHECKPOINT_FRAMES))
            db.max_wal_mb = int(settings.get("max_wal_mb", defaults.MAX_WAL_MB))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if db.upload_interval <= 0 or db.checkpoint_frames < 0 or db.max_wal_mb < 0:
            raise ConfigError(f"{where}: upload_interval must be > 0, checkpoint_frames and max_wal_mb >= 0")
        for other in config.databases.values():
            if other.path == db.path:
                raise ConfigError(f"{where}: path {db.path} is already configured as [databases.{other.name}]")
            if other.replica == db.replica:
                raise ConfigError(
                    f"{where}: replica {db.replica_display} is already used by [databases.{other.name}] "
                    "(each database needs its own replica)"
                )
        config.databases[name] = db
    return config


def _apply_maintenance(db: DatabaseConfig, settings: dict, where: str) -> None:
    """Retention, tiers and scheduler keys, each validated with an error naming file and key."""

    def get(key: str, default):
        return settings.get(key, default) if settings.get(key) is not None else default

    def duration(key: str, default: str, allow_off: bool) -> int | None:
        try:
            return parse_duration_or_off(get(key, default), allow_off)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None

    db.retention_us = duration("retention", defaults.RETENTION, True)
    db.retention = str(get("retention", defaults.RETENTION))
    for key in TIER_KEYS:
        default = getattr(defaults, key.upper())
        value = get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {key}: must be a whole number >= 0 (0 disables this tier), got {value!r}")
        setattr(db, key, value)
    db.snapshot_interval_us = duration("snapshot_interval", defaults.SNAPSHOT_INTERVAL, False)  # type: ignore[assignment]
    db.compact_after_us = duration("compact_after", defaults.COMPACT_AFTER, False)  # type: ignore[assignment]
    db.verify_interval_us = duration("verify_interval", defaults.VERIFY_INTERVAL, True)
    volume = get("snapshot_volume", defaults.SNAPSHOT_VOLUME)
    if isinstance(volume, bool) or not isinstance(volume, (int, float)) or volume < 0:
        raise ConfigError(
            f"{where}: snapshot_volume: must be a number >= 0 (a multiple of the database size; 0 disables), got {volume!r}"
        )
    db.snapshot_volume = float(volume)


def load(explicit: str | None = None, environ=None) -> Config | None:
    """Find and load the config file; None when there is none anywhere."""
    found = find_config(explicit, environ)
    return load_config(found, environ) if found else None
