#!/usr/bin/env bash
# Debian's headless browser for tests/test_chat_page.py: chromium, its WebDriver (chromedriver) and a font.
#
#   tests/browser/install.sh           apt-get install chromium chromium-driver fonts-dejavu-core if missing
#                                      (needs root; runs `apt-get update` and retries when the install fails)
#   tests/browser/install.sh check     exit 0 when they are installed, 1 (saying what is missing) otherwise
#
# `make test-browser` runs it before the browser test; the test runs it too when chromium is missing.
set -euo pipefail

PROG=install.sh
die() { echo "$PROG: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

PACKAGES=(chromium chromium-driver fonts-dejavu-core)
BINARIES=(/usr/bin/chromium /usr/bin/chromedriver)

missing() {  # the packages not installed and the binaries not there, one a line
    local p b
    for p in "${PACKAGES[@]}"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || echo "package $p"
    done
    for b in "${BINARIES[@]}"; do [ -x "$b" ] || echo "binary $b"; done
}

cmd_check() {
    local gone
    gone=$(missing)
    [ -z "$gone" ] && return 0
    say "missing: $(tr '\n' ',' <<<"$gone" | sed 's/,$//; s/,/, /g')"
    return 1
}

cmd_install() {
    if [ -z "$(missing)" ]; then say "chromium and chromium-driver already installed"; return 0; fi
    [ "$(id -u)" = 0 ] || die "must run as root to apt-get install ${PACKAGES[*]} (or install them yourself)"
    export DEBIAN_FRONTEND=noninteractive
    local log
    log=$(mktemp)
    local apt=(apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${PACKAGES[@]}")
    if ! "${apt[@]}" >"$log" 2>&1; then
        say "install failed with the current package lists; running apt-get update and retrying"
        if ! { apt-get update -qq >>"$log" 2>&1 && "${apt[@]}" >>"$log" 2>&1; }; then
            tail -n 30 "$log" >&2; rm -f "$log"; die "apt-get install ${PACKAGES[*]} failed"
        fi
    fi
    rm -f "$log"
    cmd_check || die "still missing after apt-get install"
    say "installed: $(dpkg-query -W -f='${Package} ${Version}, ' "${PACKAGES[@]}" | sed 's/, $//')"
}

case "${1:-install}" in
    install) cmd_install ;;
    check)   cmd_check ;;
    *) sed -n '2,9s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
