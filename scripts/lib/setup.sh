# Sourced by scripts/run and scripts/test: installs what a fresh machine lacks, or stops with
# the exact command to run. Setup errors exit with status 2 (1 is a kernel or test failure).

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

# Exit status of setup and build errors, distinct from a kernel's failure (1).
readonly SETUP_ERROR=2

die() {
    echo "error: $*" >&2
    exit "$SETUP_ERROR"
}

# Runs a command as root, or says how to.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo "$@"
    else
        die "not root; run: sudo $*"
    fi
}

# The quoted items of a `key = ["a", "b"]` line of rust-toolchain.toml, one a line.
toolchain_list() {
    sed -n "s/^$1 *= *\[\(.*\)\]/\1/p" rust-toolchain.toml | tr ',' '\n' | tr -d ' "' | sed '/^$/d'
}

ensure_toolchain() {
    command -v rustup >/dev/null || die "rustup is missing; install it (https://rustup.rs), then run this again"
    local channel
    channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
    [ -n "$channel" ] || die "no channel in $repo_root/rust-toolchain.toml"
    # RUSTUP_AUTO_INSTALL=0 (set on our machines) makes rustup skip a missing toolchain or
    # component silently, so check every component and target the file lists and install
    # explicitly. Installed components carry the host triple (`rustfmt-x86_64-...`), and
    # `llvm-tools-preview` is installed as `llvm-tools`.
    local installed targets missing=() c t
    installed=$(rustup component list --installed --toolchain "$channel" 2>/dev/null || true)
    targets=$(rustup target list --installed --toolchain "$channel" 2>/dev/null || true)
    for c in $(toolchain_list components); do
        grep -Eq "^${c%-preview}(-|\$)" <<<"$installed" || missing+=("component $c")
    done
    for t in $(toolchain_list targets); do
        grep -qx "$t" <<<"$targets" || missing+=("target $t")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing the pinned toolchain $channel (rust-toolchain.toml; missing: ${missing[*]})" >&2
        rustup toolchain install || die "rustup toolchain install failed; run it by hand in $repo_root"
    fi
}

# QEMU and OVMF. On a fresh Debian bookworm machine QEMU comes from Debian's own
# bookworm-backports suite (QEMU 10: its TCG offers x2APIC, which 7.2's does not), added to
# apt's sources if missing; elsewhere from the release. A QEMU already installed is kept (the
# x2APIC test variants are then reported ignored on one older than 10, and the command that
# upgrades it is printed); `QEMU=/path/to/qemu-system-x86_64` picks another one.
ensure_qemu() {
    local have_qemu=1 have_ovmf=1
    if [ -n "${QEMU:-}" ]; then
        "$QEMU" --version >/dev/null 2>&1 || die "QEMU=$QEMU does not run"
    else
        command -v qemu-system-x86_64 >/dev/null || have_qemu=0
    fi
    [ -e /usr/share/ovmf/OVMF.fd ] || [ -e /usr/share/OVMF/OVMF.fd ] || have_ovmf=0
    if [ "$have_qemu" = 1 ] && [ "$have_ovmf" = 1 ]; then
        return
    fi
    command -v apt-get >/dev/null || die "qemu-system-x86_64 and OVMF are missing; install QEMU (x86, 10 or later for x2APIC) and OVMF with your package manager"
    local packages=() target=()
    [ "$have_ovmf" = 1 ] || packages+=(ovmf)
    if [ "$have_qemu" = 0 ]; then
        packages+=(qemu-system-x86)
        if [ "$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")" = bookworm ]; then
            add_bookworm_backports
            target=(-t bookworm-backports)
        fi
    fi
    echo "setup: installing ${packages[*]}: apt-get install -y ${target[*]} ${packages[*]}" >&2
    as_root apt-get update -qq || die "apt-get update failed; run: apt-get update && apt-get install -y ${target[*]} ${packages[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${target[@]}" "${packages[@]}" >/dev/null && return
    if [ ${#target[@]} -gt 0 ]; then
        # Backports unreachable or broken: bookworm's own QEMU 7.2 runs everything but the
        # x2APIC variants, which scripts/test then reports ignored.
        echo "setup: installing from bookworm-backports failed; falling back to bookworm's QEMU 7.2: apt-get install -y ${packages[*]}" >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null && return
    fi
    die "apt-get install failed; run: apt-get install -y ${target[*]} ${packages[*]}"
}

# Debian's bookworm-backports suite (same archive and key as bookworm), unless apt has it.
add_bookworm_backports() {
    grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/ && return
    echo "setup: adding Debian's bookworm-backports suite to apt (/etc/apt/sources.list.d/bookworm-backports.sources)" >&2
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
        'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
        as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null ||
        die "cannot add bookworm-backports to apt's sources"
}

# One line when the QEMU in use lacks x2APIC under TCG (before 10); scripts/test says it.
qemu_note() {
    local v
    v=$("${QEMU:-qemu-system-x86_64}" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
    if [ -n "$v" ] && [ "$v" -lt 10 ]; then
        echo "setup: QEMU $v.x has no x2APIC under TCG: the x2APIC test variants are reported ignored (QEMU 10 on Debian bookworm: apt-get install -y -t bookworm-backports qemu-system-x86)" >&2
    fi
}

host_triple() {
    rustc -vV | sed -n 's/^host: //p'
}
