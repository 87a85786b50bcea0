#!/usr/bin/env python3
"""bench/icache.py: cache and branch events per request, from a callgrind
profile made with `--cache-sim=yes` (bench/icache.sh makes them).

    bench/icache.py PROFILE REQUESTS [TOP]

Prints each event of PROFILE per request (instructions `Ir`, L1
instruction-cache misses `I1mr`, data reads and writes, their L1 misses,
and branch events when `--branch-sim=yes` was given), then the TOP (25)
functions by L1 instruction-cache misses, each with its instructions. A
request that runs through more code than the L1i holds fetches it again
each time: the misses count the lines of code it runs past, which an
instruction count does not show (docs/benchmarks.md).
"""
import collections
import re
import sys


def main():
    path, requests = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    names = {}

    def name(rest):
        # Callgrind compresses names: `(id) name` once, `(id)` after.
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", rest)
        if not m:
            return rest
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    events, positions, fn, after_call = [], 1, None, False
    by_fn = collections.defaultdict(lambda: [0] * len(events))
    with open(path, errors="replace") as profile:
        for line in profile:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("positions:"):
                positions = len(line.split()) - 1
            elif line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                name(line[4:].strip())
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's, inclusive
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                costs = line.split()[positions:]
                own = by_fn[fn]
                for i, cost in enumerate(costs):
                    own[i] += int(cost)
    if "I1mr" not in events:
        sys.exit(f"{path}: no I1mr event (made without --cache-sim=yes?)")
    totals = [sum(own[i] for own in by_fn.values()) for i in range(len(events))]
    print("  ".join(f"{e} {t / requests:.1f}" for e, t in zip(events, totals)))
    ir, misses = events.index("Ir"), events.index("I1mr")
    print(f"{'I1mr':>8} {'Ir':>8}  function (per request)")
    ranked = sorted(by_fn.items(), key=lambda item: -item[1][misses])
    for function, own in ranked[:top]:
        print(f"{own[misses] / requests:8.1f} {own[ir] / requests:8.1f}  {function[:100]}")


if __name__ == "__main__":
    main()
