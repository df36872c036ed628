# Shared by the studies' scripts (sourced, after the script sets LOGS; run from the repository
# root after `make install`). Every command writes its output to $LOGS/NAME.log; a command
# that finished before ($LOGS/NAME.done) is not run again, so an interrupted part resumes
# where it stopped. At most $JOBS commands run at a time, one thread each.
set -euo pipefail
export OMP_NUM_THREADS=1 FSX_PROGRESS=plain
FSX=${FSX:-.venv/bin/fsx}
PYTHON=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-2}
mkdir -p "${LOGS:?set LOGS before sourcing experiments/common.sh}"

# run NAME VERB OVERRIDES...: one fsx command, in the foreground
run() {
  local name=$1 verb=$2
  shift 2
  [ -e "$LOGS/$name.done" ] && return 0
  if "$FSX" "$verb" "$@" > "$LOGS/$name.log" 2>&1; then
    touch "$LOGS/$name.done"
  else
    echo "fsx $verb failed ($name): see $LOGS/$name.log" >&2
    return 1
  fi
}

# spawn NAME VERB OVERRIDES...: the same in the background, once fewer than $JOBS run
spawn() {
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  run "$@" &
}

# finish NAME...: wait for the background commands, then check that each named one finished
finish() {
  wait || true
  local name missing=0
  for name in "$@"; do
    [ -e "$LOGS/$name.done" ] || { echo "not finished: $name (see $LOGS/$name.log)" >&2; missing=1; }
  done
  return $missing
}

# checkpoint NAME: runs:/<id> of the checkpoint a finished pretraining printed
checkpoint() {
  local id
  id=$(sed -n 's|^checkpoint: runs:/\([0-9a-f]*\)/.*|\1|p' "$LOGS/$1.log")
  [ -n "$id" ] || { echo "no checkpoint in $LOGS/$1.log" >&2; return 1; }
  echo "runs:/$id"
}
