#!/usr/bin/env python3
"""bench/atomics.py: atomic read-modify-writes per request, from a callgrind
profile made with `--dump-instr=yes` (bench/atomics.sh makes them).

    bench/atomics.py PROFILE REQUESTS BINARY [TOP]

An instruction count weighs a locked instruction (`lock add`, `lock
cmpxchg`, `xchg` with memory) like any other, yet each costs about 5 ns on
this project's machines (docs/benchmarks.md), and they are where
reference counts, wakers and mutexes spend. This finds the addresses of
BINARY's locked instructions (`objdump -d`), sums their executions in
PROFILE, divides by REQUESTS and prints the total, then the TOP (30)
functions that run them, with the instruction.
"""
import collections
import re
import subprocess
import sys


def locked_instructions(binary):
    """Address -> mnemonic of each locked instruction in `binary`."""
    found = {}
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", binary],
        capture_output=True, text=True, check=True,
    ).stdout
    for line in listing.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*(\S*)", line)
        if not m:
            continue
        mnemonic, operand = m.group(2), m.group(3)
        if mnemonic == "lock":
            found[int(m.group(1), 16)] = operand.split()[0] if operand else "lock"
        elif mnemonic.startswith("xchg") and "(" in line.split(mnemonic, 1)[1]:
            found[int(m.group(1), 16)] = "xchg"
    return found


def main():
    path, requests, binary = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    locked = locked_instructions(binary)
    names = {"fn": {}, "ob": {}}

    def name(kind, rest):
        # Callgrind compresses names: `(id) name` once, `(id)` after.
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", rest)
        if not m:
            return rest
        if m.group(2):
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), "?")

    def position(token, last):
        if token.startswith(("+", "-")):
            return last + int(token, 0)
        return last if token == "*" else int(token, 0)

    positions, fn, obj, addr, after_call = 1, None, None, 0, False
    by_fn = collections.Counter()
    with open(path, errors="replace") as profile:
        for line in profile:
            if line.startswith("positions:"):
                positions = len(line.split()) - 1
            elif line.startswith("ob="):
                obj = name("ob", line[3:].strip())
            elif line.startswith("cob="):
                name("ob", line[4:].strip())
            elif line.startswith("fn="):
                fn = name("fn", line[3:].strip())
            elif line.startswith("cfn="):
                name("fn", line[4:].strip())
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's, inclusive
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                addr = position(parts[0], addr)
                if after_call:
                    after_call = False
                    continue
                if addr in locked and obj and obj.endswith(binary.rsplit("/", 1)[-1]):
                    by_fn[(fn, locked[addr])] += int(parts[positions])
    total = sum(by_fn.values())
    print(f"{binary}: {total / requests:.1f} atomic operations per request")
    for (function, op), n in by_fn.most_common(top):
        print(f"{n / requests:8.2f}  {op:8s} {function}")


if __name__ == "__main__":
    main()
