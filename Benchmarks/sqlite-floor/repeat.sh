#!/bin/sh
# Runs sqlite-floor RUNS times with the same arguments and prints the median
# of every figure, with the machine's load before and after (CPU time is what
# is measured, but a loaded machine still inflates it: caches, SMT).
#
#   Benchmarks/sqlite-floor/repeat.sh 3 --layout log --segments table --page-size 65536 --writes 200000
#
# The database goes to $SQLITE_FLOOR_FILE (default: a temporary directory).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:?usage: repeat.sh RUNS sqlite-floor-arguments...}
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
file=${SQLITE_FLOOR_FILE:-$dir/floor.sqlite3}
load_before=$(cut -d' ' -f1 /proc/loadavg)
i=0
while [ "$i" -lt "$runs" ]; do
    "$here/sqlite-floor" --file "$file" "$@" >"$dir/out.$i"
    i=$((i + 1))
done
load_after=$(cut -d' ' -f1 /proc/loadavg)
rm -f "$file" "$file-wal" "$file-shm"
echo "args: $*"
echo "runs: $runs, load average (1 min) before $load_before, after $load_after (2 cores)"
# The first line's `X us of CPU per ...` for every layout, then each
# name=value of the `details:` line (log layout).
cat "$dir"/out.* | awk '
    /^sqlite-floor:/ { for (i = 1; i <= NF; i++) if ($i == "us" && $(i + 1) == "of") { n = ++count["us_per_op"]; v["us_per_op", n] = $(i - 1) } }
    /^details:/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[2] ~ /^[0-9.]+$/) { n = ++count[kv[1]]; v[kv[1], n] = kv[2]; if (!(kv[1] in seen)) { seen[kv[1]] = 1; order[++names] = kv[1] } } } }
    END {
        line = "median: us_per_op " median("us_per_op") " (runs: " all("us_per_op") ")"
        print line
        for (j = 1; j <= names; j++) {
            name = order[j]
            if (name == "us_per_write") continue
            printf "  %s %s (%s)\n", name, median(name), all(name)
        }
    }
    function all(name,   s, k) { s = ""; for (k = 1; k <= count[name]; k++) s = s (k > 1 ? " " : "") v[name, k]; return s }
    function median(name,   a, k, m, t, n) {
        n = count[name]
        for (k = 1; k <= n; k++) a[k] = v[name, k] + 0
        for (k = 2; k <= n; k++) { t = a[k]; m = k - 1; while (m >= 1 && a[m] > t) { a[m + 1] = a[m]; m-- } a[m + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }'
