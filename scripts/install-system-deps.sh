#!/usr/bin/env bash
# Installs the Debian packages the service, the quick start and the tests need, if missing
# (including what npm ci needs to build the native addon pkcs11js).
set -euo pipefail
need=()
[ -n "$(bash "$(dirname "$0")/find-softhsm.sh" 2>/dev/null)" ] || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v openssl >/dev/null || need+=(openssl)
# The audit tests start their own PostgreSQL server (initdb, pg_ctl) from Debian's postgresql package.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v runuser >/dev/null || need+=(util-linux)
# npm ci builds pkcs11js (a native addon with no prebuilt binary) with node-gyp: Python, make and
# a C++ compiler, which a fresh Debian 12 lacks (the Dockerfile's build stage installs the same).
command -v python3 >/dev/null || need+=(python3)
command -v make >/dev/null || need+=(make)
command -v g++ >/dev/null || need+=(g++)
# The network-HSM tests build a small PKCS#11 shim (test/fixtures/slow-pkcs11) with cc.
command -v cc >/dev/null || need+=(gcc)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing ${need[*]}" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
# On the command line, not exported: sudo's env_reset drops DEBIAN_FRONTEND, and a package's
# debconf question would then wait for an answer. A fresh machine's unattended-upgrades may hold
# the dpkg lock for a while: wait for it rather than fail at once.
APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
"${APT[@]}" update -qq
"${APT[@]}" install -y -qq "${need[@]}" >/dev/null
