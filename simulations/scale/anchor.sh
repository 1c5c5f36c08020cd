#!/usr/bin/env bash
# Runs the memberlist anchor (HashiCorp memberlist measured the same way, see README.md) with the
# same arguments as scale.sh takes N: builds its agent first if it is not there yet.
#
# usage: anchor.sh [N ...]
# env:   ML_ANCHOR=<repo>/../shared/anchors/memberlist  ML_AGENT=<temp folder>/ml-agent
#        and the anchor's own knobs (BASE_GOSSIP=17000 BASE_HTTP=18000 QUIET_S CONVERGE_MAX_S DETECT_MAX_S)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
ML_ANCHOR=${ML_ANCHOR:-$REPO/../shared/anchors/memberlist}
export ML_AGENT=${ML_AGENT:-${TMPDIR:-/tmp}/ml-agent}
[ -x "$ML_ANCHOR/scale.sh" ] || { echo "no memberlist anchor at $ML_ANCHOR (set ML_ANCHOR)" >&2; exit 1; }
[ -x "$ML_AGENT" ] || "$ML_ANCHOR/build.sh"
exec "$ML_ANCHOR/scale.sh" "$@"
