#!/usr/bin/env bash
# make test: install what is missing, build what changed, run KUnit and the integration tests
# in one VM boot, and fail on any failure. Prints how long each stage took.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

declare -a stages=()
stage() {
	local name=$1 start=$SECONDS
	shift
	log "== $name"
	"$@"
	stages+=("$name: $((SECONDS - start)) s")
}

total_start=$SECONDS
stage deps "$here/deps.sh"
stage kernel "$here/kernel.sh"
stage client "$here/client.sh"
stage client-unit bash -c "set -o pipefail; cd '$REPO/tests/client' && cargo test --release --locked --quiet 2>&1 | tail -n 3"
set +e
vm_start=$SECONDS
"$here/vm.sh" 'bash tests/guest/run-tests.sh'
status=$?
if [ "$status" = 75 ]; then
	log "the VM stalled before the tests finished; booting it once more"
	"$here/vm.sh" 'bash tests/guest/run-tests.sh'
	status=$?
fi
set -e
stages+=("vm (KUnit + integration): $((SECONDS - vm_start)) s")

log "== timings"
for s in "${stages[@]}"; do log "  $s"; done
log "  total: $((SECONDS - total_start)) s"
exit $status
