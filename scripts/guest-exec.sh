#!/usr/bin/env bash
# Runs in the VM: the command in $1/cmd, output to $1/output, status to $1/status.
out=$1
cd "$(dirname "$0")/.." || exit 1
bash "$out/cmd" >> "$out/output" 2>&1
echo $? > "$out/status"
sync
