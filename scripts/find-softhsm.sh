#!/usr/bin/env bash
# Prints the path of SoftHSM2's PKCS#11 library.
for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  [ -e "$p" ] && { echo "$p"; exit 0; }
done
exit 1
