#!/usr/bin/env python3
"""
run-tests.py - run lmtpgw's unit tests (Criterion) and integration tests (real daemon).

    python3 tests/run-tests.py [--build DIR] [--valgrind] [-k SUBSTRING]... [--no-unit]
                               [--timeout SECONDS] [--list]

Unit tests: BUILD/unit-tests (Criterion) if it exists; its "[====] Synthesis:" line gives the
counts. Integration tests: every function test_* of tests/integration/test_*.py, in file order,
each with a time limit; each prints "PASS name", "SKIP name: why" (only for things this machine
lacks; counted apart, never as passed) or "FAIL name: reason" and a traceback. A missing
unit-test binary is a failure. A test that skips because a real server is missing (it raises
harness.RealServerMissing: Dovecot, S3, webhook, Postfix, real LMTP clients) FAILS when the
environment has CI=true, so a green CI means every real-server suite ran. The skipped tests are
listed again before the summary; the last line is always "N passed, N failed, N skipped" and
the exit status is 1 if anything failed. python3 stdlib only.
"""
import argparse
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INTEGRATION = os.path.join(HERE, "integration")

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SYNTHESIS = re.compile(r"Synthesis: Tested: (\d+) \| Passing: (\d+) \| Failing: (\d+) \| Crashing: (\d+)")


def in_ci():
    return os.environ.get("CI", "").lower() == "true"


def run_unit(build, out):
    """Returns (passed, failed)."""
    exe = os.path.join(build, "unit-tests")
    if not os.path.exists(exe):
        # Not a skip: a run without the unit tests must not look like a run with them.
        out("FAIL unit-tests: %s not built (make %s)" % (exe, exe))
        return 0, 1
    started = time.time()
    try:
        p = subprocess.run([exe, "--verbose=0"], capture_output=True, timeout=600, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        out("FAIL unit-tests: timed out after 600 s")
        out(((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")[-5000:])
        return 0, 1
    text = ANSI.sub("", (p.stdout + p.stderr).decode("utf-8", "replace"))
    m = None
    for m in SYNTHESIS.finditer(text):
        pass
    if m is None:
        out("FAIL unit-tests: no Criterion synthesis line (exit status %d)" % p.returncode)
        out(text[-5000:])
        return 0, 1
    tested, passing, failing, crashing = (int(x) for x in m.groups())
    failed = failing + crashing
    if failed == 0 and p.returncode != 0:
        out("FAIL unit-tests: synthesis says all passed but exit status is %d" % p.returncode)
        out(text[-5000:])
        return passing, 1
    if failed or tested != passing + failed:
        out("FAIL unit-tests: %d tested, %d passing, %d failing, %d crashing" % m.groups())
        out(text[-10000:])
        failed = max(failed, tested - passing)
    else:
        out("PASS unit-tests: %d Criterion tests (%.1f s)" % (passing, time.time() - started))
    return passing, failed


def discover(selected):
    """[(name, function)] of every test_* in tests/integration/test_*.py, in file order."""
    sys.path.insert(0, INTEGRATION)
    tests = []
    for fn in sorted(os.listdir(INTEGRATION)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        modname = fn[:-3]
        spec = importlib.util.spec_from_file_location(modname, os.path.join(INTEGRATION, fn))
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception:
            name = modname + ".<import>"
            err = traceback.format_exc()
            tests.append((name, lambda err=err: (_ for _ in ()).throw(ImportError(err))))
            continue
        funcs = [(f.__code__.co_firstlineno, n, f) for n, f in vars(mod).items()
                 if n.startswith("test_") and inspect.isfunction(f) and f.__module__ == mod.__name__]
        for _line, n, f in sorted(funcs, key=lambda x: x[0]):
            tests.append(("%s.%s" % (modname, n), f))
    if selected:
        tests = [(n, f) for n, f in tests if any(k in n for k in selected)]
    return tests


def run_one(func, timeout):
    """Run func in a thread; returns (status, detail) with status 'pass', 'skip', 'fail'."""
    result = {}

    def target():
        try:
            func()
            result["status"] = ("pass", None)
        except BaseException as e:   # noqa: B902 - report everything, including SystemExit
            # harness.Skip and its subclasses (RealServerMissing); by name, because a test
            # module may have imported harness under another module object.
            if any(c.__name__ == "Skip" for c in type(e).__mro__):
                result["status"] = ("skip", e)
            else:
                result["status"] = ("fail", (e, traceback.format_exc()))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return "fail", (TimeoutError("timed out after %d s" % timeout), "")
    return result.get("status", ("fail", (RuntimeError("no result"), "")))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="build directory (default: build)")
    ap.add_argument("--valgrind", action="store_true", help="run lmtpgw under valgrind")
    ap.add_argument("-k", action="append", default=[], metavar="SUBSTRING",
                    help="only integration tests whose name contains SUBSTRING (repeatable); "
                         "unit tests run only if 'unit' is one of them")
    ap.add_argument("--no-unit", action="store_true", help="skip the Criterion unit tests")
    ap.add_argument("--timeout", type=float, default=None, help="per-test limit in seconds "
                    "(default 60, 240 with --valgrind; a test function's .timeout attribute "
                    "raises it in the same proportion)")
    ap.add_argument("--list", action="store_true", help="list the integration tests and exit")
    args = ap.parse_args()

    build = args.build if os.path.isabs(args.build) else os.path.join(ROOT, args.build)
    os.environ["LMTPGW_BUILD"] = build
    os.environ["LMTPGW_VALGRIND"] = "1" if args.valgrind else ""
    timeout = args.timeout or (240.0 if args.valgrind else 60.0)

    def out(s=""):
        print(s, flush=True)

    tests = discover(args.k)
    if args.list:
        for n, _f in tests:
            out(n)
        return 0

    passed = failed = 0
    skipped = []
    if not args.no_unit and (not args.k or "unit" in args.k):
        p, f = run_unit(build, out)
        passed += p
        failed += f

    if not os.path.exists(os.path.join(build, "lmtpgw")):
        out("FAIL integration: %s/lmtpgw not built" % build)
        failed += 1
        tests = []
    import harness  # noqa: E402 - after sys.path is set by discover()

    started = time.time()
    for name, func in tests:
        t0 = time.time()
        # A test may need longer than the default (func.timeout, seconds; scaled like it).
        limit = max(timeout, getattr(func, "timeout", 0) * (timeout / 60.0))
        status, detail = run_one(func, limit)
        harness.kill_all()     # daemons a timed-out or broken test left behind
        dt = time.time() - t0
        if status == "pass":
            passed += 1
            out("PASS %s (%.1f s)" % (name, dt))
        elif status == "skip" and getattr(detail, "real_server", None) and in_ci():
            failed += 1
            out("FAIL %s: the %s suite was skipped, but CI=true requires every real-server suite "
                "to run: %s" % (name, detail.real_server, detail))
        elif status == "skip":
            skipped.append((name, detail))
            out("SKIP %s: %s" % (name, detail))
        else:
            failed += 1
            exc, tb = detail
            reason = str(exc).split("\n")[0] or type(exc).__name__
            out("FAIL %s: %s" % (name, reason))
            if tb:
                out("    " + tb.rstrip().replace("\n", "\n    "))
            elif str(exc).count("\n"):
                out("    " + str(exc).replace("\n", "\n    "))
    if tests:
        out("integration: %d tests in %.1f s%s" % (len(tests), time.time() - started,
                                                   " (valgrind)" if args.valgrind else ""))
    for name, why in skipped:
        out("skipped: %s: %s" % (name, why))
    out("%d passed, %d failed, %d skipped" % (passed, failed, len(skipped)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
