"""
test_libetpan_pin - lmtpgw's use of libetpan internals stays in one file, pinned to one version.

The hand-written APPEND (LITERAL+, MULTIAPPEND) drives libetpan's session tag, its raw response
parser, the response information of the last command, and a function declared only in
libetpan's private mailimap_sender.h. src/etpan_private.c is the one file allowed to touch them,
and it refuses to compile against a libetpan other than the 1.9 it was checked against
(docs/backends/imap.md, "libetpan version"). These tests keep both promises true: no other
source names those internals, and the build check fires on another version (simulated by
predefining libetpan_version.h's macros, which that header only defines when unset).

Each test_* function takes no argument and raises AssertionError on failure (run by
tests/run-tests.py). python3 stdlib only.
"""
import glob
import os
import re
import shutil
import subprocess

from harness import ROOT, Skip

PINNED = os.path.join(ROOT, "src", "etpan_private.c")

# libetpan internals: private functions and session fields a hand-written command needs.
INTERNALS = re.compile(r"\bmailimap_send_current_tag\b|\bmailimap_parse_response\b|"
                       r"\bmailimap_read_line\b|\bmailimap_literal_data_send\b|"
                       r"mailimap_sender\.h|->\s*imap_response(_info)?\b|\bimap_tag\b")


def compile_pinned(*defines):
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None or shutil.which("pkg-config") is None:
        raise Skip("no %s or pkg-config" % cc)
    flags = subprocess.run(["pkg-config", "--cflags", "libetpan"], capture_output=True,
                           text=True, timeout=30).stdout.split()
    flags = [f for f in flags if not f.startswith("-specs=")]
    cmd = [cc, "-std=c17", "-D_GNU_SOURCE", "-I" + os.path.join(ROOT, "include")] + flags + \
        ["-D" + d for d in defines] + ["-fsyntax-only", PINNED]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_libetpan_internals_only_in_etpan_private():
    sources = glob.glob(os.path.join(ROOT, "src", "**", "*.[ch]"), recursive=True) + \
        glob.glob(os.path.join(ROOT, "include", "*.h"))
    found = []
    for path in sorted(sources):
        if os.path.basename(path) in ("etpan_private.c", "etpan_private.h"):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if INTERNALS.search(line):
                    found.append("%s:%d: %s" % (os.path.relpath(path, ROOT), number,
                                                line.strip()))
    assert not found, "libetpan internals outside src/etpan_private.c:\n  " + "\n  ".join(found)


def test_libetpan_version_pin_fails_loudly():
    ok = compile_pinned()
    assert ok.returncode == 0, "etpan_private.c does not compile here:\n" + ok.stderr
    for defines in (("LIBETPAN_VERSION_MINOR=10",), ("LIBETPAN_VERSION_MAJOR=2",),
                    ("LIBETPAN_VERSION_MINOR=8",)):
        p = compile_pinned(*defines)
        assert p.returncode != 0, "etpan_private.c compiled with %s" % (defines,)
        assert "checked against libetpan 1.9 only: see docs/backends/imap.md" in p.stderr, \
            "no pin message with %s:\n%s" % (defines, p.stderr)
