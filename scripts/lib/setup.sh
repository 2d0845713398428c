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

ensure_qemu() {
    if command -v qemu-system-x86_64 >/dev/null && [ -e /usr/share/ovmf/OVMF.fd ]; then
        return
    fi
    command -v apt-get >/dev/null || die "qemu-system-x86_64 and OVMF are missing; install QEMU (x86) and OVMF with your package manager"
    echo "setup: installing QEMU and OVMF: apt-get install -y qemu-system-x86 ovmf" >&2
    as_root apt-get update -qq || die "apt-get update failed; run: apt-get update && apt-get install -y qemu-system-x86 ovmf"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 ovmf >/dev/null ||
        die "apt-get install failed; run: apt-get install -y qemu-system-x86 ovmf"
}

host_triple() {
    rustc -vV | sed -n 's/^host: //p'
}
