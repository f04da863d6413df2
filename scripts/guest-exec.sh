#!/usr/bin/env bash
# Runs in the VM: the environment in $1/env (written by scripts/vm.sh), then the command in
# $1/cmd, output to $1/output, status to $1/status.
out=$1
cd "$(dirname "$0")/.." || exit 1
bash -c '. "$1/env" && exec bash "$1/cmd"' guest-env "$out" >> "$out/output" 2>&1
echo $? > "$out/status"
sync
