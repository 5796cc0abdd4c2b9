#!/usr/bin/env python3
"""
check.py - what `make check` runs: the test suite, and with --deep (automatic in CI, where
CI=true) the same suite under ASan/UBSan, the integration tests with lmtpgw under valgrind,
and every fuzz target briefly. Each phase prints its own results and ends with its own
"N passed, N failed, N skipped"; the last line is the sum in the same form, and the exit status
is 1 when anything failed (a phase without a summary line counts as one failure). python3
stdlib only.

    python3 tests/check.py [--build DIR] [--valgrind] [--deep] [--fuzz-seconds N]
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$")


def run(cmd, title):
    """Run a phase, echo its output, return (passed, failed, skipped) from its last summary."""
    print("==== %s: %s" % (title, " ".join(cmd)), flush=True)
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    last = None
    for raw in p.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        m = SUMMARY.match(line)
        if m:
            last = tuple(int(x) for x in m.groups())
            line = "%s: %s" % (title, line)  # only the final sum stands alone at the end
        print(line, flush=True)
    rc = p.wait()
    print("==== %s done in %.0f s (exit %d)" % (title, time.time() - t0, rc), flush=True)
    if last is None:
        print("FAIL %s: no \"N passed, N failed, N skipped\" line" % title, flush=True)
        return 0, 1, 0
    if rc != 0 and last[1] == 0:
        print("FAIL %s: exit status %d with no failure counted" % (title, rc), flush=True)
        return last[0], 1, last[2]
    return last


def make(args, title):
    print("==== %s: make %s" % (title, " ".join(args)), flush=True)
    p = subprocess.run(["make", "--no-print-directory"] + args, cwd=ROOT, stdin=subprocess.DEVNULL)
    return p.returncode == 0


def fuzz(seconds):
    """`make fuzz` with a short time per target: (passed, failed, skipped), one per target."""
    print("==== fuzz: make fuzz FUZZ_SECONDS=%d" % seconds, flush=True)
    p = subprocess.Popen(["make", "--no-print-directory", "fuzz", "FUZZ_SECONDS=%d" % seconds],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    started = []
    tail = []
    for raw in p.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        m = re.match(r"^fuzz: (\S+) for \d+s$", line)
        if m:
            started.append(m.group(1))
            print(line, flush=True)
        tail = (tail + [line])[-60:]
    rc = p.wait()
    if rc == 0 and started:
        for t in started:
            print("PASS fuzz %s (%d s)" % (t, seconds), flush=True)
        return len(started), 0, 0
    print("\n".join(tail), flush=True)
    print("FAIL fuzz %s: exit %d" % (started[-1] if started else "build", rc), flush=True)
    return max(len(started) - 1, 0), 1, 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--valgrind", action="store_true")
    ap.add_argument("--deep", action="store_true")
    ap.add_argument("--fuzz-seconds", type=int, default=10)
    a = ap.parse_args()

    results = []
    cmd = [sys.executable, os.path.join(HERE, "run-tests.py"), "--build", a.build]
    if a.valgrind:
        cmd.append("--valgrind")
    results.append(run(cmd, "suite"))
    if a.deep:
        if make(["BUILD=build-asan", "SANITIZE=address,undefined", "all", "build-asan/unit-tests"],
                "asan build"):
            os.environ["LMTPGW_SANITIZED"] = "1"
            results.append(run([sys.executable, os.path.join(HERE, "run-tests.py"), "--build",
                                "build-asan"], "asan"))
            os.environ["LMTPGW_SANITIZED"] = ""
        else:
            print("FAIL asan build", flush=True)
            results.append((0, 1, 0))
        results.append(run([sys.executable, os.path.join(HERE, "run-tests.py"), "--build",
                            a.build, "--valgrind", "--no-unit"], "valgrind"))
        results.append(fuzz(a.fuzz_seconds))
    passed = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    skipped = sum(r[2] for r in results)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
