"""The configuration file: which databases are replicated where, and where restored copies live.

    data_dir = "./walrewind-data"          # restored databases + catalog live here
    [databases.production-db]
    path = "/var/lib/app/prod.db"
    replica = "s3://backups/prod?endpoint=http://127.0.0.1:8333"
    retention = "7d"                       # "off": never delete (lifecycle rules / no delete permission)
    encryption_key_file = "/etc/walrewind/prod.key"   # encrypt at rest (or a list; docs/SECURITY.md)
    keep_daily = 7                         # snapshots kept beyond the window (0 disables a tier)
    keep_weekly = 4
    keep_monthly = 12

    [sqld]                                 # a libSQL server (sqld): every namespace is replicated
    data_dir = "/var/lib/sqld/data.sqld"   # sqld --db-path; namespace NS is dbs/NS/data
    replica = "s3://backups/sqld?endpoint=${S3_URL}"   # namespace NS goes to <replica>/NS
    admin_url = "http://127.0.0.1:9090"    # sqld --admin-listen-addr (db create/destroy of namespaces)
    http_url = "http://127.0.0.1:8080"     # sqld --http-listen-addr (db create checks the new namespace)
    retention = "7d"                       # ... and every per-database setting, for every namespace

Found at ``--config FILE``, else ``$WALREWIND_CONFIG``, else ``./walrewind.toml``, else
``~/.config/walrewind/config.toml`` (``$XDG_CONFIG_HOME`` respected).  ``${NAME}`` in any string
value is replaced by the environment variable NAME (unset is an error; ``$${`` is a literal ``${``).
Relative paths (``data_dir``, ``path``, ``state_dir``, a plain-path ``replica``) are relative to
the directory holding the config file, so the file means the same thing from any working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from urllib.parse import urlparse

import tomllib

from .. import defaults
from ..errors import ConfigError, InvalidName
from ..maintenance.retention import RetentionPolicy
from ..timeparse import parse_duration_or_off, parse_duration_us

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", re.ASCII)
CONFIG_NAME = defaults.CONFIG_NAME
_ENV_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_TOP_KEYS = {"data_dir", "databases", "sqld", "metrics_addr", "lag_budget"}
# Settings of one database's daemon and maintenance: in [databases.NAME], and in [sqld] for every namespace.
_PER_DB_KEYS = {
    "retention", "upload_interval", "checkpoint_frames", "max_wal_mb",
    "keep_daily", "keep_weekly", "keep_monthly",
    "snapshot_interval", "snapshot_volume", "compact_after", "verify_interval", "encryption_key_file",
}
_DB_KEYS = {"path", "replica", "state_dir"} | _PER_DB_KEYS
_SQLD_KEYS = {"data_dir", "replica", "admin_url", "http_url", "client_url", "state_dir"} | _PER_DB_KEYS
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
    # Set for a sqld namespace (``[sqld]``): its name, and sqld's id for it (stats.json), which
    # tells a namespace re-created under the same name from the one before.
    namespace: str | None = None
    namespace_id: str | None = None
    # Encryption at rest (engine/storage/keys.py): key files, the writing key's first.
    encryption_key_files: tuple[str, ...] = ()

    def keyring(self, files: tuple[str, ...] = (), environ=None):
        """The keys for this database: ``files`` (command line), its key files, then the environment."""
        from ..storage.keys import load_keyring

        return load_keyring(files, self.encryption_key_files, environ)

    @property
    def kind(self) -> str:
        """What ``db list`` calls it."""
        return "sqld namespace" if self.namespace is not None else "replicated"

    def retention_policy(self) -> RetentionPolicy:
        """The RetentionPolicy this database's settings describe (engine/maintenance/retention.py)."""
        return RetentionPolicy(self.retention_us, self.keep_daily, self.keep_weekly, self.keep_monthly)

    @property
    def replica_display(self) -> str:
        """The replica URL without any ACCESS_KEY:SECRET@ part (safe for messages and the catalog)."""
        return redact_url(self.replica)


def redact_url(url: str) -> str:
    if "@" not in url:  # (no credentials: the health file samples every database's replica often)
        return url
    parsed = urlparse(url)
    if parsed.scheme and "@" in parsed.netloc:
        return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
    return url


def join_replica(base: str, name: str) -> str:
    """``base`` with ``/name`` added to its path (query and credentials kept): a namespace's replica."""
    parsed = urlparse(base)
    if parsed.scheme and len(parsed.scheme) > 1:
        return parsed._replace(path=parsed.path.rstrip("/") + "/" + name).geturl()
    return os.path.join(base, name)


@dataclass
class SqldConfig:
    """``[sqld]``: every namespace of one sqld data directory, each replicated like a database.

    Namespace NS is ``<data_dir>/dbs/NS/data``; it replicates to ``<replica>/NS`` and keeps its
    state in ``<state_dir>/NS`` (default ``<state root>/sqld/NS``).  ``settings`` carries the
    per-database settings (retention, upload_interval, ...) every namespace gets.
    """

    data_dir: str  # sqld's --db-path (holds dbs/, metastore/, .version)
    replica: str
    admin_url: str | None = None  # sqld --admin-listen-addr: create/delete namespaces
    http_url: str | None = None  # sqld --http-listen-addr: check a namespace over HTTP
    client_url: str | None = None  # how clients reach sqld (default: http_url, loopback as localhost)
    state_dir: str | None = None  # root: namespace NS keeps its state in <state_dir>/NS
    settings: DatabaseConfig = field(default_factory=lambda: DatabaseConfig("", "", ""))

    @property
    def dbs_dir(self) -> str:
        return os.path.join(self.data_dir, "dbs")

    def namespace_dir(self, namespace: str) -> str:
        return os.path.join(self.dbs_dir, namespace)

    def namespace_path(self, namespace: str) -> str:
        return os.path.join(self.dbs_dir, namespace, "data")

    def state_root(self) -> str:
        return self.state_dir or os.path.join(defaults.state_root(), "sqld")

    def namespace(self, namespace: str, namespace_id: str | None = None) -> DatabaseConfig:
        """The settings of namespace ``namespace``, as for a configured database."""
        return replace(self.settings, name=namespace, path=self.namespace_path(namespace),
                       replica=join_replica(self.replica, namespace),
                       state_dir=os.path.join(self.state_root(), namespace),
                       namespace=namespace, namespace_id=namespace_id)

    def owns(self, path: str) -> str | None:
        """The namespace whose database ``path`` is (or is inside), if any."""
        rel = os.path.relpath(os.path.realpath(path), os.path.realpath(self.dbs_dir))
        if rel == "." or rel.startswith(".."):
            return None
        return rel.split(os.sep)[0]

    @property
    def replica_display(self) -> str:
        return redact_url(self.replica)


@dataclass
class Config:
    path: str | None  # the file this came from (None: no file, nothing configured)
    data_dir: str
    databases: dict[str, DatabaseConfig] = field(default_factory=dict)
    sqld: SqldConfig | None = None
    metrics_addr: str | None = None  # replicate serves /metrics and /healthz here (HOST:PORT)
    lag_budget_s: float = defaults.LAG_BUDGET_SECONDS  # /healthz and status: healthy while lag <= this

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
            f"{path}: unknown setting(s) {', '.join(unknown)} (top level knows: data_dir, metrics_addr, lag_budget, "
            "[databases.NAME], [sqld])"
        )
    data_dir = _expand(raw.get("data_dir", defaults.DATA_DIR), "data_dir", environ)
    if not isinstance(data_dir, str) or not data_dir:
        raise ConfigError(f"{path}: data_dir must be a directory path")
    config = Config(path, _resolve_path(base, data_dir))
    _apply_operations(config, _expand({k: raw[k] for k in ("metrics_addr", "lag_budget") if k in raw}, path, environ))
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
        _apply_settings(db, settings, where, base)
        if settings.get("state_dir") is not None:
            db.state_dir = _resolve_path(base, str(settings["state_dir"]))
        for other in config.databases.values():
            if other.path == db.path:
                raise ConfigError(f"{where}: path {db.path} is already configured as [databases.{other.name}]")
            if other.replica == db.replica:
                raise ConfigError(
                    f"{where}: replica {db.replica_display} is already used by [databases.{other.name}] "
                    "(each database needs its own replica)"
                )
        config.databases[name] = db
    if "sqld" in raw:
        config.sqld = load_sqld(raw["sqld"], base, f"{path}: [sqld]", environ)
        _check_sqld_overlap(config)
    return config


def _apply_operations(config: Config, raw: dict) -> None:
    """Top-level metrics_addr (HOST:PORT) and lag_budget (a duration such as "60s" or "5m")."""
    if "metrics_addr" in raw:
        addr = raw["metrics_addr"]
        if not isinstance(addr, str) or ":" not in addr:
            raise ConfigError(f"{config.path}: metrics_addr must be \"HOST:PORT\", e.g. \"127.0.0.1:9093\"")
        config.metrics_addr = addr
    if "lag_budget" in raw:
        value = raw["lag_budget"]
        try:
            config.lag_budget_s = (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                                   else parse_duration_us(str(value)) / 1e6)
        except ValueError as exc:
            raise ConfigError(f"{config.path}: lag_budget: {exc}") from None
        if config.lag_budget_s <= 0:
            raise ConfigError(f"{config.path}: lag_budget must be positive")


def _apply_settings(db: DatabaseConfig, settings: dict, where: str, base: str = "") -> None:
    """The daemon and maintenance settings of one database (or of every namespace)."""
    _apply_maintenance(db, settings, where)
    files = settings.get("encryption_key_file")
    if files is not None:
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
            raise ConfigError(f"{where}: encryption_key_file must be a file path or a list of them")
        db.encryption_key_files = tuple(_resolve_path(base, f) for f in files)
    try:
        db.upload_interval = float(settings.get("upload_interval", defaults.UPLOAD_INTERVAL_SECONDS))
        db.checkpoint_frames = int(settings.get("checkpoint_frames", defaults.CHECKPOINT_FRAMES))
        db.max_wal_mb = int(settings.get("max_wal_mb", defaults.MAX_WAL_MB))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if db.upload_interval <= 0 or db.checkpoint_frames < 0 or db.max_wal_mb < 0:
        raise ConfigError(f"{where}: upload_interval must be > 0, checkpoint_frames and max_wal_mb >= 0")


def http_url(value, where: str, key: str) -> str:
    """An http(s)://HOST[:PORT] base URL (no path), or a ConfigError saying what is wrong."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a URL like http://127.0.0.1:8080, got {value!r}")
    parsed = urlparse(value)
    try:
        parsed.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ConfigError(f"{where}: {key} {value!r} has an invalid port") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path not in ("", "/") \
            or parsed.query or parsed.fragment:
        raise ConfigError(f"{where}: {key} must be http(s)://HOST[:PORT] with no path, got {value!r}")
    return value.rstrip("/")


def load_sqld(raw, base: str, where: str, environ=None) -> SqldConfig:
    """Validate a ``[sqld]`` table (or the same from ``replicate --sqld-*`` flags)."""
    environ = os.environ if environ is None else environ
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table with data_dir and replica")
    unknown = sorted(set(raw) - _SQLD_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(_SQLD_KEYS))})")
    raw = _expand(raw, "sqld", environ)
    for required, what in (("data_dir", "sqld's --db-path, the directory holding dbs/"), ("replica", "a replica URL")):
        if not isinstance(raw.get(required), str) or not raw[required]:
            raise ConfigError(f"{where}: '{required}' is required ({what})")
    sqld = SqldConfig(_resolve_path(base, raw["data_dir"]), _resolve_replica(base, raw["replica"]))
    for key in ("admin_url", "http_url", "client_url"):
        if raw.get(key) is not None:
            setattr(sqld, key, http_url(raw[key], where, key))
    if raw.get("state_dir") is not None:
        if not isinstance(raw["state_dir"], str) or not raw["state_dir"]:
            raise ConfigError(f"{where}: state_dir must be a directory path")
        sqld.state_dir = _resolve_path(base, raw["state_dir"])
    _apply_settings(sqld.settings, raw, where, base)
    return sqld


def sqld_with_options(base: SqldConfig | None, data_dir: str | None, replica: str | None,
                      admin_url: str | None) -> SqldConfig | None:
    """``[sqld]`` with ``replicate --sqld-data-dir/--sqld-replica/--sqld-admin-url`` applied (they
    win; relative paths are relative to the working directory).  None when neither says anything."""
    where = "replicate --sqld-* options"
    if base is None:
        if data_dir is None and replica is None and admin_url is None:
            return None
        if data_dir is None or replica is None:
            raise ConfigError(f"{where}: give both --sqld-data-dir and --sqld-replica (or a [sqld] section)")
        raw = {"data_dir": data_dir, "replica": replica}
        if admin_url is not None:
            raw["admin_url"] = admin_url
        return load_sqld(raw, os.getcwd(), where)
    out = replace(base)
    if data_dir is not None:
        out.data_dir = _resolve_path(os.getcwd(), data_dir)
    if replica is not None:
        out.replica = _resolve_replica(os.getcwd(), replica)
    if admin_url is not None:
        out.admin_url = http_url(admin_url, where, "--sqld-admin-url")
    return out


def _location(url: str) -> tuple[str, str, str]:
    """(scheme, host, path) of a replica URL or path, without credentials or query: what it names."""
    parsed = urlparse(url)
    if parsed.scheme and len(parsed.scheme) > 1:
        path = os.path.normpath(parsed.path) if parsed.scheme == "file" else parsed.path.strip("/")
        return parsed.scheme, (parsed.hostname or ""), path
    return "file", "", os.path.normpath(os.path.abspath(url))


def _check_sqld_overlap(config: Config) -> None:
    assert config.sqld is not None
    check_sqld_overlap(config.databases, config.sqld, str(config.path))


def check_sqld_overlap(databases: dict[str, DatabaseConfig], sqld: SqldConfig, where: str) -> None:
    """A database must not be replicated twice: as [databases.X] and as a namespace."""
    for name, db in databases.items():
        ns = sqld.owns(db.path)
        if ns is not None:
            raise ConfigError(f"{where}: [databases.{name}] path {db.path} is namespace {ns!r} of [sqld] "
                              f"data_dir {sqld.data_dir}, which is replicated already; remove one of the two")
        (scheme, host, path), (db_scheme, db_host, db_path) = _location(sqld.replica), _location(db.replica)
        prefix = path.rstrip("/")
        if (db_scheme, db_host) == (scheme, host) and (db_path == path or not prefix or db_path.startswith(prefix + "/")):
            raise ConfigError(f"{where}: [databases.{name}] replica {db.replica_display} is inside [sqld] replica "
                              f"{sqld.replica_display}, where every namespace NS gets <replica>/NS; use another path")


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
