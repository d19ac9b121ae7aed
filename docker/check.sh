#!/usr/bin/env bash
# Static checks of docker/ that need no Docker engine:
#   - every COPY source in docker/Dockerfile exists relative to the repository root (the build
#     context), and the copied paths cover what pyproject.toml needs to build (readme, package dirs)
#   - the image runs as a non-root user, declares the volumes and XDG_STATE_HOME
#   - the ENTRYPOINT command is a [project.scripts] entry in pyproject.toml
#   - docker/compose.yaml parses as YAML (PyYAML if available, else a minimal structural check)
#     and its walrewind service runs a real CLI subcommand against a defined S3 service
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
import os, re, sys, shlex, yaml
path, root = sys.argv[1:3]
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
wr = services.get("walrewind")
if not wr:
    print("FAIL no 'walrewind' service")
    sys.exit()
build = wr.get("build")
if isinstance(build, dict):
    ctx = os.path.normpath(os.path.join(os.path.dirname(path), build.get("context", ".")))
    dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
    if ctx == os.path.normpath(root) and os.path.isfile(dockerfile):
        print(f"OK build context is the repo root and {os.path.relpath(dockerfile, root)} exists")
    else:
        print(f"FAIL build context {ctx} / dockerfile {dockerfile} do not point at the repo's Dockerfile")
cmd = wr.get("command")
cmd = shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])
main = open(os.path.join(root, "cli", "main.py")).read()
# cli/main.py registers its commands lazily: COMMANDS = {"name": ("module:attr", "short help"), ...}
known = set(re.findall(r'^\s*"([\w-]+)":\s*\("\w+:\w+"', main, flags=re.M))
if cmd and cmd[0] in known:
    print(f"OK walrewind command '{cmd[0]}' is a CLI subcommand ({', '.join(sorted(known))})")
else:
    print(f"FAIL walrewind command {cmd[:1]} is not one of the CLI subcommands {sorted(known)}")
urls = [a for a in cmd if a.startswith("s3://")]
for url in urls:
    m = re.search(r"endpoint=https?://([^:/?&]+)", url)
    if m and m.group(1) in services:
        print(f"OK S3 endpoint host '{m.group(1)}' is a compose service")
    elif m:
        print(f"FAIL S3 endpoint host '{m.group(1)}' is not a compose service")
vols = [str(v) for v in wr.get("volumes", [])]
for target in ("/data", "/state"):
    if any(v.split(":")[1:2] == [target] for v in vols):
        print(f"OK walrewind mounts {target}")
    else:
        print(f"FAIL walrewind does not mount {target}")
if any(v.split(":")[1:2] == ["/data"] and v.endswith(":ro") for v in vols):
    print("FAIL /data is mounted read-only: SQLite readers must be able to write the -shm")
EOF
)"
    while IFS= read -r line; do
        case "$line" in
            OK\ *) ok "${line#OK }" ;;
            FAIL\ *) fail "${line#FAIL }" ;;
        esac
    done <<< "$compose_out"
else
    # Minimal check without PyYAML: no tabs, a top-level services: key, both services present.
    if grep -q $'\t' "$COMPOSE"; then fail "compose.yaml contains tab characters (invalid YAML indentation)"
    else ok "compose.yaml has no tabs (PyYAML not available: minimal check only)"; fi
    if grep -q '^services:[[:space:]]*$' "$COMPOSE"; then ok "compose.yaml has a top-level services: key"
    else fail "compose.yaml has no top-level services: key"; fi
    for svc in seaweedfs walrewind; do
        if grep -Eq "^  ${svc}:[[:space:]]*$" "$COMPOSE"; then ok "service $svc defined"; else fail "service $svc missing"; fi
    done
    if grep -Eq ':/data:ro([[:space:]"]|$)' "$COMPOSE"; then
        fail "/data is mounted read-only: SQLite readers must be able to write the -shm"
    else
        ok "/data is not mounted read-only"
    fi
fi

if [ "$failures" -eq 0 ]; then
    echo "all checks passed (static only: no image was built)"
    exit 0
fi
echo "$failures check(s) failed"
exit 1
