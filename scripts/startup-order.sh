#!/usr/bin/env bash
# Writes agent/startup.order: the functions the agent runs from start to idle, which the
# release build's linker (lld) lays out together (see agent/build.rs). Every function
# touched at start otherwise pulls the 64 KiB of code around it into memory (the kernel
# maps neighbouring pages on a fault), and the start-up code was spread over all of the
# binary's 18.5 MiB of code.
#
# How: a release build (the same profile, so the same symbol names) with the linker's
# map, the agent run to idle under callgrind, each address it ran mapped to its function.
# Regenerate after dependency updates: their symbols' hashes change, and names no
# longer found are skipped, so a stale list only lays out less. Needs valgrind.
#   scripts/startup-order.sh [SECONDS]   (how long the agent idles under valgrind, 40)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-40}
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install -y valgrind" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
WASMLET_LINK_MAP="$work/map" cargo build --release -p wasmlet --bin wasmlet
mkdir "$work/state"
# a small pool: valgrind cannot reserve terabytes; the code that runs is the same
timeout -s INT "$secs" valgrind --tool=callgrind --dump-instr=no --compress-strings=no --compress-pos=no \
    --callgrind-out-file="$work/callgrind" target/release/wasmlet --state-dir "$work/state" serve \
    --max-wasm-instances 16 >/dev/null 2>&1 || true
python3 - "$work/map" "$work/callgrind" agent/startup.order <<'PY'
import bisect, re, sys
map_file, callgrind, out = sys.argv[1:4]
# lld's map: "VMA LMA size align  object:(.text.<symbol>)", one line per function
line_re = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S.*:\(\.text\.(.+)\)\s*$")
sections = sorted(
    (int(m[1], 16), int(m[2], 16), m[3])
    for m in map(line_re.match, open(map_file, errors="replace"))
    if m and int(m[2], 16)
)
starts = [s for s, _, _ in sections]
names, seen, obj = [], set(), None
for line in open(callgrind):
    if line.startswith("ob="):
        obj = line[3:].strip()
    elif line.startswith("fn=0x") and obj and obj.endswith("/wasmlet"):
        # callgrind names a function's recursion levels fn'2, fn'3…
        addr = int(line[5:].split()[0].split("'")[0], 16)
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < sections[i][0] + sections[i][1]:
            # LLVM puts cold functions in .text.unlikely.<symbol> (and hot ones in .text.hot.)
            name = re.sub(r"^(unlikely|hot|startup|exit|split)\.", "", sections[i][2])
            if name not in seen:
                seen.add(name)
                names.append(name)
open(out, "w").write("\n".join(names) + "\n")
print(f"{len(names)} functions in {out}")
PY
