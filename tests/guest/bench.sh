#!/usr/bin/env bash
# Runs in the VM (make bench, scripts/bench.sh): the benchmark of issue 4 on the ivshmem
# twin's first device, vfio-pci and vfio-pci-rs interleaved, BENCH_RUNS pairs (default 5).
set -u
cd "$(dirname "$0")/../.." || exit 1
. tests/guest/devices.sh

CLIENT=tests/client/target/release/vfio-test
BENCH_RUNS=${BENCH_RUNS:-5}

ivshmem=
for t in "${TWINS[@]}"; do
	case "$t" in ivshmem=*) ivshmem=${t#ivshmem=} ;; esac
done
bdf=${ivshmem%,*}

echo "== bench: kernel $(uname -r), $(nproc) cpus, $BENCH_RUNS pairs on $bdf"
if grep -qw pdpe1gb /proc/cpuinfo; then
	echo "# guest CPU has pdpe1gb (1 GiB pages)"
else
	echo "# guest CPU lacks pdpe1gb: fault-1G falls back to 2 MiB pages"
fi
modprobe vfio_pci && modprobe vfio_pci_rs || exit 1
"$CLIENT" bench "$bdf" --runs "$BENCH_RUNS"
