"""
A short soak (the full one is `make soak`): messages through Maildir and IMAP (real Dovecot
behind a proxy that resets and stalls connections at random). Every 2xx has exactly one stored
copy, no 5xx for a transient fault, nothing lost.
"""
from harness import VALGRIND
import soak


def test_soak_with_random_faults_loses_nothing():
    report, problems = soak.run(messages=200 if VALGRIND else 800, sessions=6, seed=7,
                                verbose=True)
    assert not problems, "\n".join(problems[:20])
    assert report["lost"] == 0
    assert report["recipient replies"].get("2xx", 0) > 0
