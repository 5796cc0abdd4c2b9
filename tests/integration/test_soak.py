"""
A short soak (the full one is `make soak`): messages through Maildir, IMAP (real Dovecot), S3
(the S3 server behind its strict front) and a webhook receiver, with faults injected per request
on every backend (resets, stalls, replies dropped after the store acted; Maildir tmp/ and new/
blocked by time). No 2xx without a whole stored copy in every store of its route, nothing
partial, no 5xx for a transient fault, and every kind of fault fired at least 3 times on every
backend (else the run showed nothing).
"""
from harness import VALGRIND
import soak


def test_soak_with_random_faults_loses_nothing():
    # Under valgrind fewer messages: faults armed more often so each kind still fires 3 times.
    report, problems = soak.run(messages=200 if VALGRIND else 500, sessions=6, seed=7,
                                min_faults=3, fault_every=8 if VALGRIND else 16, verbose=True)
    assert not problems, "\n".join(problems[:20])
    assert report["lost"] == 0 and report["partial"] == 0 and report["wrong 5xx"] == 0
    assert report["recipient replies"].get("2xx", 0) > report["messages"]
    assert report["recipient replies"].get("4xx", 0) > 0, "faults fired but nothing failed"


# The soak runs longer than run-tests.py's default limit per test.
test_soak_with_random_faults_loses_nothing.timeout = 240
