#!/usr/bin/env bash
# One VM's control-plane lifecycle through banger: create, start, stop,
# delete. Usage: lifecycle-banger.sh BANGER NAME [create flags...]
# The daemon and its image come from the environment (see run.sh).
set -euo pipefail
banger=$1 name=$2
shift 2
"$banger" vm create --name "$name" "$@" >/dev/null
"$banger" vm start "$name" >/dev/null
"$banger" vm stop "$name" >/dev/null
"$banger" vm delete "$name" >/dev/null
