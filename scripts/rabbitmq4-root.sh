#!/usr/bin/env bash
# Make (once) a Debian trixie root file system holding rabbitmq-server 4.x, so that the test
# suite can run the broker tests against RabbitMQ 4 and the deployment smoke test can build
# its broker image from 4.x packages (docker import), on a machine whose own packages ship
# RabbitMQ 3.x.
#
#   scripts/rabbitmq4-root.sh          # prints the root's directory, building it if needed
#
# The root is cached outside the repository, in $COLMENA_RABBITMQ4_ROOT (default
# /var/cache/colmena/rabbitmq4-root): the first run takes about ten minutes (debootstrap
# downloads ~100 MB of packages), later runs return at once. A root is only published under
# that name once it is complete (built aside in <root>.building, then renamed), so an
# interrupted build never leaves a half-made cache behind, and the next run starts over;
# concurrent runs wait for each other (flock).
# Needs root (debootstrap) and a Debian mirror: $COLMENA_DEBIAN_MIRROR, else the one this
# machine's apt uses, else debootstrap's own default.
set -euo pipefail

root="${COLMENA_RABBITMQ4_ROOT:-/var/cache/colmena/rabbitmq4-root}"

# The Debian archive this machine's apt uses (deb822 or one-line sources), if any
apt_mirror() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$file"
    done | head -n 1
    if [ -f /etc/apt/sources.list ]; then
        awk '$1 == "deb" && $2 !~ /^\[/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list
    fi
}
mirror="${COLMENA_DEBIAN_MIRROR:-$(apt_mirror | head -n 1 || true)}"
suite="${COLMENA_RABBITMQ4_SUITE:-trixie}"
marker="$root/.colmena-root-complete"

complete() {
    [ -f "$marker" ] && [ -x "$root/usr/lib/rabbitmq/bin/rabbitmq-server" ]
}

if complete; then
    # Directories of throwaway nodes whose test run was killed (a day old: none is running)
    find "$root/tmp" -mindepth 1 -maxdepth 1 -name 'colmena-rabbitmq-*' -mmin +1440 \
        -exec rm -rf {} + 2>/dev/null || true
    echo "$root"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "rabbitmq4-root: building $root needs root (debootstrap)." >&2
    exit 1
fi

parent="$(dirname "$root")"
mkdir -p "$parent"
exec 9>"$root.lock"
flock 9
if complete; then # another run finished it while we waited
    echo "$root"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "rabbitmq4-root: installing debootstrap" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap debian-archive-keyring >/dev/null
fi

# A root is published under its name only once complete (see above): anything else there is
# not ours, and is left alone.
if [ -e "$root" ]; then
    echo "rabbitmq4-root: $root exists but is not a complete root made by this script;" \
        "remove it or set COLMENA_RABBITMQ4_ROOT elsewhere." >&2
    exit 1
fi
# What an interrupted build left (debootstrap may leave its proc/sys mounts) goes first.
work="$root.building"
for mount_point in "$work/proc" "$work/dev" "$work/sys"; do
    if mountpoint -q "$mount_point" 2>/dev/null; then umount -l "$mount_point"; fi
done
rm -rf "$work"

echo "rabbitmq4-root: building a $suite root with rabbitmq-server in $root (about 10 min)" >&2
debootstrap --variant=minbase --include=rabbitmq-server "$suite" "$work" ${mirror:+"$mirror"} >&2
if [ ! -x "$work/usr/lib/rabbitmq/bin/rabbitmq-server" ]; then
    echo "rabbitmq4-root: debootstrap finished but rabbitmq-server is missing" >&2
    exit 1
fi
# Nothing of the package's own service set-up is used: nodes get their own directories.
rm -rf "$work/var/cache/apt/archives/"*.deb
chroot "$work" dpkg-query -W -f '${Version}\n' rabbitmq-server >"$work/.colmena-rabbitmq-version"
touch "$work/.colmena-root-complete"
mv "$work" "$root"
echo "$root"
