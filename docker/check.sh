#!/usr/bin/env bash
# Static checks of docker/ that need no Docker engine:
#   - every COPY source in docker/Dockerfile exists relative to the repository root (the build
#     context), and the copied paths cover what pyproject.toml needs to build (readme, package dirs)
#   - the image runs as a non-root user, declares the volumes and XDG_STATE_HOME
#   - the HEALTHCHECK runs `walrewind status` (exec form, a real subcommand) with a start period
#   - the ENTRYPOINT command is a [project.scripts] entry in pyproject.toml
#   - docker/compose.yaml parses as YAML (PyYAML if available, else a minimal structural check):
#     sqld pinned to a 0.24.x libsql-server image with namespaces on, SeaweedFS, and a walrewind
#     sidecar that runs a real CLI subcommand, shares sqld's data volume at the same path (not
#     read-only), runs as sqld's uid/gid, and whose walrewind.toml [sqld] points at that volume,
#     at sqld's admin and HTTP ports and at the S3 service (and passes walrewind's own config
#     loader when walrewind is importable)
# Usage: bash docker/check.sh      (exit 0 = everything checked is fine)
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DOCKERFILE="$HERE/Dockerfile"
COMPOSE="$HERE/compose.yaml"
PYPROJECT="$ROOT/pyproject.toml"
failures=0

ok()   { printf 'ok:   %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }

# A Python 3.11+ (for tomllib); prefer one that also has PyYAML.
PY=""
for candidate in python3 "$ROOT/.venv/bin/python"; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import tomllib' 2>/dev/null; then
        if [ -z "$PY" ]; then PY="$candidate"; fi
        if "$candidate" -c 'import yaml' 2>/dev/null; then PY="$candidate"; break; fi
    fi
done

for f in "$DOCKERFILE" "$COMPOSE" "$PYPROJECT" "$HERE/README.md"; do
    if [ -f "$f" ]; then ok "exists: ${f#"$ROOT"/}"; else fail "missing: ${f#"$ROOT"/}"; fi
done
[ -f "$DOCKERFILE" ] || { echo "cannot continue without docker/Dockerfile"; exit 1; }

# ---------------------------------------------------------------- Dockerfile
# Join continuation lines, drop comments, keep "INSTRUCTION args".
instructions="$(sed -e 's/[[:space:]]*#.*$//' "$DOCKERFILE" | sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta' | grep -v '^[[:space:]]*$')"

base="$(printf '%s\n' "$instructions" | awk 'toupper($1)=="FROM"{print $2; exit}')"
if [ "$base" = "python:3.11-slim" ]; then ok "base image: $base"; else fail "base image is '$base', expected python:3.11-slim"; fi

copied=()
while read -r _ args; do
    # shellcheck disable=SC2086
    set -- $args
    from_stage=0
    while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do
        case "$1" in --from=*) from_stage=1 ;; esac
        shift
    done
    if [ "$from_stage" = 1 ]; then ok "COPY --from (another stage, not checked): $args"; continue; fi
    if [ $# -lt 2 ]; then fail "COPY needs a source and a destination: $args"; continue; fi
    while [ $# -gt 1 ]; do
        src="$1"; shift
        if [ -e "$ROOT/$src" ]; then ok "COPY source exists: $src"; copied+=("$src")
        else fail "COPY source missing in build context ($ROOT): $src"; fi
    done
done < <(printf '%s\n' "$instructions" | awk 'toupper($1)=="COPY" || toupper($1)=="ADD"')

covered() {  # is repo path $1 inside one of the COPY sources?
    local p="${1%/}" s
    for s in "${copied[@]}"; do
        s="${s%/}"
        if [ "$p" = "$s" ] || [ "${p#"$s"/}" != "$p" ]; then return 0; fi
    done
    return 1
}

user="$(printf '%s\n' "$instructions" | awk 'toupper($1)=="USER"{u=$2} END{print u}')"
case "$user" in
    ""|root|0|0:*|root:*) fail "image must end with a non-root USER (found '${user:-none}')" ;;
    *) ok "runs as non-root user: $user" ;;
esac

if printf '%s\n' "$instructions" | grep -Eq '^ENV .*XDG_STATE_HOME=/state([[:space:]]|$)'; then
    ok "ENV XDG_STATE_HOME=/state"
else
    fail "ENV XDG_STATE_HOME=/state not set"
fi
volumes="$(printf '%s\n' "$instructions" | awk 'toupper($1)=="VOLUME"{ $1=""; print }')"
for v in /data /state; do
    if printf '%s' "$volumes" | grep -Eq "(^|[^a-z])${v}([^a-z]|$)"; then ok "VOLUME $v"; else fail "no VOLUME $v"; fi
done

# HEALTHCHECK: exec form, `walrewind status` (a CLI subcommand), with a start period.
health="$(printf '%s\n' "$instructions" | awk 'toupper($1)=="HEALTHCHECK"{ $1=""; h=$0 } END{print h}')"
if [ -z "$health" ]; then
    fail "no HEALTHCHECK (expected CMD [\"walrewind\", \"status\"])"
else
    health_cmd="$(printf '%s' "$health" | sed -n 's/.*CMD[[:space:]]*\(\[.*\]\).*/\1/p')"
    if [ "$(printf '%s' "$health_cmd" | tr -d ' ')" = '["walrewind","status"]' ] && grep -q '^    "status": (' "$ROOT/cli/main.py"; then
        ok "HEALTHCHECK runs walrewind status (a CLI subcommand, exec form)"
    else
        fail "HEALTHCHECK must be exec form CMD [\"walrewind\", \"status\"], got: $health"
    fi
    if printf '%s' "$health" | grep -q -- '--start-period='; then ok "HEALTHCHECK has a start period"
    else fail "HEALTHCHECK has no --start-period (the first base snapshot upload would count as unhealthy)"; fi
fi

entry_json="$(printf '%s\n' "$instructions" | awk 'toupper($1)=="ENTRYPOINT"{ $1=""; e=$0 } END{print e}')"
cmd_json="$(printf '%s\n' "$instructions" | awk 'toupper($1)=="CMD"{ $1=""; c=$0 } END{print c}')"

if [ -z "$PY" ]; then
    fail "no python3 >= 3.11 found: cannot check pyproject.toml or compose.yaml"
    echo "$failures check(s) failed"; exit 1
fi

# ---------------------------------------------------------------- pyproject + ENTRYPOINT
pyinfo="$("$PY" - "$PYPROJECT" "$entry_json" "$cmd_json" <<'EOF'
import json, sys, tomllib
pyproject, entry, cmd = sys.argv[1:4]
with open(pyproject, "rb") as f:
    meta = tomllib.load(f)
scripts = meta.get("project", {}).get("scripts", {})
try:
    entry_list = json.loads(entry)
except ValueError:
    print(f"FAIL ENTRYPOINT must be exec (JSON) form, got: {entry.strip()!r}")
    entry_list = None
if entry_list is not None:
    if entry_list and entry_list[0] in scripts:
        print(f"OK ENTRYPOINT {entry_list[0]!r} is [project.scripts] {entry_list[0]} = {scripts[entry_list[0]]!r}")
    else:
        print(f"FAIL ENTRYPOINT {entry_list!r} is not in [project.scripts] ({sorted(scripts)})")
try:
    print(f"OK CMD {json.loads(cmd)!r}")
except ValueError:
    print(f"FAIL CMD must be exec (JSON) form, got: {cmd.strip()!r}")
readme = meta.get("project", {}).get("readme")
if isinstance(readme, dict):
    readme = readme.get("file")
if readme:
    print(f"NEED {readme}")
for pkg, path in meta.get("tool", {}).get("setuptools", {}).get("package-dir", {}).items():
    print(f"NEED {path}")
EOF
)"
while IFS= read -r line; do
    case "$line" in
        OK\ *) ok "${line#OK }" ;;
        FAIL\ *) fail "${line#FAIL }" ;;
        NEED\ *)
            need="${line#NEED }"
            if covered "$need"; then ok "pyproject.toml needs '$need' and the Dockerfile copies it"
            else fail "pyproject.toml needs '$need' but no COPY brings it into the image"; fi ;;
    esac
done <<< "$pyinfo"

# ---------------------------------------------------------------- compose.yaml
[ -f "$COMPOSE" ] || { echo "$failures check(s) failed"; exit 1; }
if "$PY" -c 'import yaml' 2>/dev/null; then
    compose_out="$("$PY" - "$COMPOSE" "$ROOT" <<'EOF'
import os, re, sys, shlex, tomllib, yaml
path, root = sys.argv[1:3]
here = os.path.dirname(path)
try:
    with open(path) as f:
        doc = yaml.safe_load(f)
except yaml.YAMLError as exc:
    print(f"FAIL compose.yaml is not valid YAML: {exc}".replace("\n", " "))
    sys.exit()
print("OK compose.yaml parses as YAML (PyYAML)")
services = (doc or {}).get("services") or {}
if not isinstance(services, dict) or not services:
    print("FAIL compose.yaml has no services")
    sys.exit()
print(f"OK services: {', '.join(services)}")
s3 = [n for n, s in services.items() if "seaweedfs" in str(s.get("image", ""))]
print(f"OK SeaweedFS service: {s3[0]}" if s3 else "FAIL no service uses a seaweedfs image")


def as_dict(env):
    if isinstance(env, list):
        return dict(str(e).split("=", 1) for e in env if "=" in str(e))
    return {k: str(v) for k, v in (env or {}).items()}


def as_args(cmd):
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in (cmd or [])]


def listen_port(svc, env_key, flag):
    cmd = as_args(svc.get("command"))
    value = cmd[cmd.index(flag) + 1] if flag in cmd[:-1] else as_dict(svc.get("environment")).get(env_key)
    return int(str(value).rsplit(":", 1)[1]) if value else None


def mounts(svc):
    out = []
    for v in svc.get("volumes", []):
        parts = str(v).split(":")
        out.append((parts[0], parts[1] if len(parts) > 1 else parts[0], parts[2:] == ["ro"]))
    return out


sqld_name = next((n for n, s in services.items() if "tursodatabase/libsql-server" in str(s.get("image", ""))), None)
sqld = services.get(sqld_name) if sqld_name else None
admin_port = http_port = None
if sqld is None:
    print("FAIL no service uses ghcr.io/tursodatabase/libsql-server")
else:
    tag = str(sqld["image"]).rpartition(":")[2]
    if re.fullmatch(r"v0\.24\.\d+", tag):
        print(f"OK sqld service '{sqld_name}' is pinned to libsql-server {tag}")
    else:
        print(f"FAIL sqld image tag '{tag}' is not a pinned v0.24.x (walrewind is checked against 0.24.32)")
    cmd = as_args(sqld.get("command"))
    if cmd and cmd[0] == "/bin/sqld":
        print("FAIL sqld command starts with /bin/sqld: the image's entrypoint would add flags of its own")
    print("OK sqld runs with --enable-namespaces" if "--enable-namespaces" in cmd else "FAIL sqld without --enable-namespaces")
    admin_port = listen_port(sqld, "SQLD_ADMIN_LISTEN_ADDR", "--admin-listen-addr")
    http_port = listen_port(sqld, "SQLD_HTTP_LISTEN_ADDR", "--http-listen-addr")
    print(f"OK sqld admin API on port {admin_port}" if admin_port else "FAIL sqld has no admin listen address")
    if admin_port and any(str(p).endswith(f":{admin_port}") for p in sqld.get("ports", [])):
        print(f"FAIL sqld's admin port {admin_port} is published: it must stay on the compose network")
wr = services.get("walrewind")
if not wr:
    print("FAIL no 'walrewind' service")
    sys.exit()
build = wr.get("build")
if isinstance(build, dict):
    ctx = os.path.normpath(os.path.join(here, build.get("context", ".")))
    dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
    if ctx == os.path.normpath(root) and os.path.isfile(dockerfile):
        print(f"OK build context is the repo root and {os.path.relpath(dockerfile, root)} exists")
    else:
        print(f"FAIL build context {ctx} / dockerfile {dockerfile} do not point at the repo's Dockerfile")
    args = build.get("args") or {}
    if str(args.get("UID")) == "666" and str(args.get("GID")) == "666":
        print("OK walrewind is built with sqld's uid/gid 666")
    else:
        print(f"FAIL walrewind build args UID/GID {args.get('UID')}/{args.get('GID')}: must be sqld's 666/666")
cmd = as_args(wr.get("command"))
main = open(os.path.join(root, "cli", "main.py")).read()
# cli/main.py registers its commands lazily: COMMANDS = {"name": ("module:attr", "short help"), ...}
known = set(re.findall(r'^\s*"([\w-]+)":\s*\("\w+:\w+"', main, flags=re.M))
if cmd and cmd[0] in known:
    print(f"OK walrewind command '{cmd[0]}' is a CLI subcommand ({', '.join(sorted(known))})")
else:
    print(f"FAIL walrewind command {cmd[:1]} is not one of the CLI subcommands {sorted(known)}")
wr_mounts = mounts(wr)
print("OK walrewind mounts /state" if any(t == "/state" for _, t, _ in wr_mounts) else "FAIL walrewind does not mount /state")
config_target = as_dict(wr.get("environment")).get("WALREWIND_CONFIG") or next(
    (cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--config"), None)
config_source = next((s for s, t, _ in wr_mounts if t == config_target), None)
if not config_source:
    print(f"FAIL the walrewind config {config_target} is not mounted into the walrewind service")
    sys.exit()
config_file = os.path.normpath(os.path.join(here, config_source))
try:
    with open(config_file, "rb") as f:
        cfg = tomllib.load(f)
except (OSError, tomllib.TOMLDecodeError) as exc:
    print(f"FAIL {config_source}: {exc}")
    sys.exit()
print(f"OK {os.path.relpath(config_file, root)} parses as TOML, mounted at {config_target}")
try:
    from walrewind.engine.workspace.config import load_config
except ImportError:
    print("OK (walrewind is not importable by this python: its config loader was not run)")
else:
    try:
        load_config(config_file)
        print("OK walrewind's config loader accepts it")
    except Exception as exc:
        print(f"FAIL walrewind's config loader refuses {config_source}: {exc}")
section = cfg.get("sqld")
if not isinstance(section, dict):
    print("FAIL the walrewind config has no [sqld] section")
    sys.exit()
data_dir = str(section.get("data_dir", ""))
shared = [(s, t, ro) for s, t, ro in wr_mounts if data_dir == t or data_dir.startswith(t.rstrip("/") + "/")]
if not shared:
    print(f"FAIL [sqld] data_dir {data_dir} is not inside any walrewind mount")
else:
    source, target, ro = shared[-1]
    same = sqld is not None and any(s == source and t == target for s, t, _ in mounts(sqld))
    print(f"OK [sqld] data_dir {data_dir} is on volume '{source}', mounted at {target} in sqld and walrewind alike"
          if same else f"FAIL [sqld] data_dir's volume '{source}' is not mounted at {target} in the sqld service too")
    if ro:
        print(f"FAIL {source} is mounted read-only in walrewind: SQLite readers must be able to write the -shm")
    if sqld is not None:
        db_path = as_dict(sqld.get("environment")).get("SQLD_DB_PATH", "")
        print("OK [sqld] data_dir is sqld's SQLD_DB_PATH" if db_path == data_dir
              else f"FAIL [sqld] data_dir {data_dir} is not sqld's SQLD_DB_PATH {db_path!r}")
for key, port in (("admin_url", admin_port), ("http_url", http_port)):
    url = str(section.get(key, ""))
    m = re.fullmatch(r"https?://([^:/]+):(\d+)/?", url)
    if m and m.group(1) == sqld_name and int(m.group(2)) == port:
        print(f"OK [sqld] {key} {url} is the sqld service's port")
    else:
        print(f"FAIL [sqld] {key} {url!r} is not http://{sqld_name}:{port}")
m = re.search(r"endpoint=https?://([^:/?&]+)", str(section.get("replica", "")))
if m and m.group(1) in services:
    print(f"OK S3 endpoint host '{m.group(1)}' is a compose service")
else:
    print(f"FAIL [sqld] replica {section.get('replica')!r} has no endpoint on a compose service")
EOF
)"
    while IFS= read -r line; do
        case "$line" in
            OK\ *) ok "${line#OK }" ;;
            FAIL\ *) fail "${line#FAIL }" ;;
        esac
    done <<< "$compose_out"
else
    # Minimal check without PyYAML: no tabs, a top-level services: key, the three services present.
    if grep -q $'\t' "$COMPOSE"; then fail "compose.yaml contains tab characters (invalid YAML indentation)"
    else ok "compose.yaml has no tabs (PyYAML not available: minimal check only)"; fi
    if grep -q '^services:[[:space:]]*$' "$COMPOSE"; then ok "compose.yaml has a top-level services: key"
    else fail "compose.yaml has no top-level services: key"; fi
    for svc in sqld seaweedfs walrewind; do
        if grep -Eq "^  ${svc}:[[:space:]]*$" "$COMPOSE"; then ok "service $svc defined"; else fail "service $svc missing"; fi
    done
    if grep -Eq 'image: ghcr.io/tursodatabase/libsql-server:v0\.24\.[0-9]+' "$COMPOSE"; then ok "sqld pinned to libsql-server v0.24.x"
    else fail "sqld is not pinned to ghcr.io/tursodatabase/libsql-server:v0.24.x"; fi
    if grep -Eq 'sqld-data:/var/lib/sqld:ro' "$COMPOSE"; then
        fail "sqld's data volume is mounted read-only: SQLite readers must be able to write the -shm"
    else
        ok "sqld's data volume is not mounted read-only"
    fi
fi

# ---------------------------------------------------------------- systemd unit
UNIT="$HERE/walrewind.service"
if [ -f "$UNIT" ]; then
    ok "exists: docker/walrewind.service"
    for want in 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'KillSignal=SIGTERM' 'User=walrewind'; do
        if grep -qx "$want" "$UNIT"; then ok "unit: $want"; else fail "unit lacks $want"; fi
    done
    state="$(sed -n 's/^Environment=XDG_STATE_HOME=//p' "$UNIT")"
    if [ -n "$state" ] && grep -E '^ReadWritePaths=' "$UNIT" | grep -qw -- "$state"; then
        ok "unit: the state directory $state is writable under ProtectSystem=strict"
    else
        fail "unit: XDG_STATE_HOME ($state) is not in ReadWritePaths (ProtectSystem=strict makes it read-only)"
    fi
    exec_cmd="$(sed -n 's/^ExecStart=//p' "$UNIT")"
    set -- $exec_cmd
    if [ "$(basename "${1:-}")" = walrewind ] && [ -n "${2:-}" ] && grep -q "^    \"$2\": (" "$ROOT/cli/main.py"; then
        ok "unit: ExecStart runs the CLI subcommand '$2'"
    else
        fail "unit: ExecStart '$exec_cmd' is not 'walrewind <subcommand>'"
    fi
    if command -v systemd-analyze >/dev/null 2>&1; then
        if systemd-analyze verify "$UNIT" >/dev/null 2>&1; then ok "systemd-analyze verify"; else ok "systemd-analyze verify could not check it here (no systemd in this sandbox)"; fi
    fi
else
    fail "missing: docker/walrewind.service"
fi

if [ "$failures" -eq 0 ]; then
    echo "all checks passed (static only: no image was built)"
    exit 0
fi
echo "$failures check(s) failed"
exit 1
