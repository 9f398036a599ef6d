#!/usr/bin/env bash
# Interleaved A/B of the stream worker: a base commit against the working tree.
#
#   bench/ab_streams.sh [BASE_REV=HEAD~1] [PAIRS=3] [extra bench_streams.py flags...]
#
# On a shared machine the rate moves by ~10 % within minutes, so two sets measured
# one after the other compare the machine, not the code. This runs
# bench_streams.py --repeat 1 alternately on a git worktree of BASE_REV and on the
# working tree (same script, same Python environment: the worker process imports
# the code of the directory it is started from) and prints each run and the
# medians. Needs the project's environment active (scripts/test sets it up).
set -euo pipefail

base_rev=${1:-HEAD~1}
pairs=${2:-3}
shift $(( $# < 2 ? $# : 2 ))

root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
python=${PYTHON:-python}
base_dir=$(mktemp -d -t mekb-ab-XXXXXX)
trap 'git -C "$root" worktree remove --force "$base_dir" >/dev/null 2>&1 || true' EXIT
git -C "$root" worktree add --quiet --detach "$base_dir" "$base_rev"

rates_base=()
rates_new=()
for ((i = 1; i <= pairs; i++)); do
  for side in base new; do
    dir=$root
    [[ $side == base ]] && dir=$base_dir
    line=$(cd "$dir" && "$python" "$root/bench/bench_streams.py" --repeat 1 "$@" | grep '^run 1:')
    rate=$(sed -E 's/.* rate ([0-9,.]+) .*/\1/; s/,//g' <<<"$line")
    echo "pair $i $side (load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo ?)): $line"
    if [[ $side == base ]]; then rates_base+=("$rate"); else rates_new+=("$rate"); fi
  done
done

"$python" - "$base_rev" "${rates_base[*]}" "${rates_new[*]}" <<'EOF'
import statistics
import sys

rev, base, new = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
b, n = statistics.median(base), statistics.median(new)
print(f"\nmedian of {len(base)} pairs: base {rev} {b:,.0f} events/s, working tree {n:,.0f} events/s "
      f"-> {n / b:.2f}x")
EOF
