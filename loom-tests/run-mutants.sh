#!/usr/bin/env bash
# Proves every loom model can fail: for each mutants/*.patch (an engine bug),
# apply it to a scratch copy of the repository, run the loom model named in
# its "Model:" line (a test of loom-tests/tests/models.rs or, with "Run: lib",
# a unit test of the engine crate), and require the model to fail. Exits
# non-zero if any mutant survives (its model passes), does not build, or no
# longer applies.
#
#   loom-tests/run-mutants.sh            # engine from the working tree
#   MUTANT_FROM=HEAD loom-tests/run-mutants.sh   # engine from git HEAD
#   loom-tests/run-mutants.sh no-hand-off        # only the named mutants
#
# Logs: $MUTANT_SCRATCH/logs/<name>.log (default /tmp/hierlock-loom-mutants).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
scratch=${MUTANT_SCRATCH:-/tmp/hierlock-loom-mutants}
export CARGO_TARGET_DIR=${MUTANT_TARGET_DIR:-$scratch/target}
export RUSTFLAGS="--cfg loom"
export LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-2}

rm -rf "$scratch/repo" "$scratch/pristine" "$scratch/logs"
mkdir -p "$scratch/repo" "$scratch/logs"
if [ "${MUTANT_FROM:-}" = HEAD ]; then
    git -C "$root" archive HEAD | tar -x -C "$scratch/repo"
    # the models and mutants as they are now
    rm -rf "$scratch/repo/loom-tests"
fi
tar -c -C "$root" --exclude=./target --exclude=./loom-tests/target \
    --exclude=./fuzz --exclude=./.git \
    $([ "${MUTANT_FROM:-}" = HEAD ] && echo loom-tests || echo .) |
    tar -x -C "$scratch/repo"
cp -r "$scratch/repo/src" "$scratch/pristine"

if [ $# -gt 0 ]; then
    patches=()
    for n in "$@"; do patches+=("$here/mutants/$n.patch"); done
else
    patches=("$here"/mutants/*.patch)
fi

survived=0
for patch in "${patches[@]}"; do
    name=$(basename "$patch" .patch)
    model=$(sed -n 's/^Model: //p' "$patch" | head -n1)
    log="$scratch/logs/$name.log"
    rm -rf "$scratch/repo/src"
    cp -r "$scratch/pristine" "$scratch/repo/src"
    if ! (cd "$scratch/repo" && { git apply "$patch" 2>/dev/null ||
        patch -p1 --forward --fuzz=3 --no-backup-if-mismatch -s <"$patch"; }) >"$log" 2>&1; then
        echo "STALE     $name  (the patch no longer applies to src/: regenerate it)"
        survived=1
        continue
    fi
    start=$(date +%s)
    # "Run: lib": the model is a unit test of the engine crate itself (the
    # index's models, src/index.rs); otherwise one of tests/models.rs.
    if [ "$(sed -n 's/^Run: //p' "$patch" | head -n1)" = lib ]; then
        run=(cd "$scratch/repo" '&&' cargo test --release --lib -- --exact "$model" --test-threads=1)
    else
        run=(cd "$scratch/repo/loom-tests" '&&' cargo test --release --test models -- --exact "$model" --test-threads=1)
    fi
    if (eval "${run[@]}") >"$log" 2>&1; then
        echo "SURVIVED  $name  (model $model passed)"
        survived=1
    elif grep -q "could not compile" "$log"; then
        echo "UNVIABLE  $name  (does not build; see $log)"
        survived=1
    else
        echo "CAUGHT    $name  by $model in $(($(date +%s) - start))s:"
        grep -m1 -A1 "panicked at" "$log" | sed 's/^/    /' || true
    fi
done
rm -rf "$scratch/repo/src"
cp -r "$scratch/pristine" "$scratch/repo/src"
exit $survived
