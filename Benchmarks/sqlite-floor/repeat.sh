#!/bin/sh
# Runs sqlite-floor RUNS times for each configuration (one quoted string of
# arguments each), the configurations in alternation so that a change in the
# machine's load hits them alike, and prints the median of every figure per
# configuration, with the load average before and after. CPU time is what
# sqlite-floor measures, but a loaded machine still inflates it (caches, SMT).
#
#   Benchmarks/sqlite-floor/repeat.sh 3 "--layout log --segments range --page-size 65536" \
#                                       "--layout log --segments table --page-size 65536"
#
# The database goes to $SQLITE_FLOOR_FILE (default: a temporary directory).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:?usage: repeat.sh RUNS "sqlite-floor arguments" ["other arguments" ...]}
shift
[ $# -ge 1 ] || { echo "usage: repeat.sh RUNS \"sqlite-floor arguments\" ..." >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
file=${SQLITE_FLOOR_FILE:-$dir/floor.sqlite3}
load_before=$(cut -d' ' -f1 /proc/loadavg)
i=0
while [ "$i" -lt "$runs" ]; do
    c=0
    for config in "$@"; do
        # shellcheck disable=SC2086 # each configuration is a list of arguments
        "$here/sqlite-floor" --file "$file" $config >"$dir/out.$c.$i"
        c=$((c + 1))
    done
    i=$((i + 1))
done
load_after=$(cut -d' ' -f1 /proc/loadavg)
rm -f "$file" "$file-wal" "$file-shm"
echo "runs: $runs each, alternating; load average (1 min) before $load_before, after $load_after (2 cores)"
c=0
for config in "$@"; do
    echo "args: $config"
    # The first line's `X us of CPU per ...` for every layout, then each
    # name=value of the `details:` line (log layout).
    cat "$dir"/out.$c.* | awk '
        /^sqlite-floor:/ { for (i = 1; i <= NF; i++) if ($i == "us" && $(i + 1) == "of") { n = ++count["us_per_op"]; v["us_per_op", n] = $(i - 1) } }
        /^details:/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[2] ~ /^[0-9.]+$/) { n = ++count[kv[1]]; v[kv[1], n] = kv[2]; if (!(kv[1] in seen)) { seen[kv[1]] = 1; order[++names] = kv[1] } } } }
        END {
            print "  median: us_per_op " median("us_per_op") " (runs: " all("us_per_op") ")"
            for (j = 1; j <= names; j++) {
                name = order[j]
                if (name == "us_per_write") continue
                printf "    %s %s (%s)\n", name, median(name), all(name)
            }
        }
        function all(name,   s, k) { s = ""; for (k = 1; k <= count[name]; k++) s = s (k > 1 ? " " : "") v[name, k]; return s }
        function median(name,   a, k, m, t, n) {
            n = count[name]
            for (k = 1; k <= n; k++) a[k] = v[name, k] + 0
            for (k = 2; k <= n; k++) { t = a[k]; m = k - 1; while (m >= 1 && a[m] > t) { a[m + 1] = a[m]; m-- } a[m + 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }'
    c=$((c + 1))
done
