"""
Maildir with several recipients: the message is written and fsynced once, the other
recipients get hard links (as Dovecot does); with Delivered-To every copy differs, so each is
written on its own.
"""
import os

from harness import Lmtpgw, expect, send_message

CONTENT = b"Subject: links\r\n\r\nbody\r\n"


def test_one_file_linked_into_every_maildir():
    with Lmtpgw() as gw:
        with gw.session() as c:
            rcpts = ["a@example.test", "b@example.test", "c@example.test", "a@example.test"]
            for r in send_message(c, "s@example.test", rcpts, CONTENT):
                expect(r, 250, "2.0.0")
        files = gw.messages("a") + gw.messages("b") + gw.messages("c")
        assert len(files) == 4, files
        inodes = {os.stat(f).st_ino for f in files}
        assert len(inodes) == 1, "expected one file linked 4 times, got %d inodes" % len(inodes)
        assert os.stat(files[0]).st_nlink == 4
        assert all(open(f, "rb").read().endswith(CONTENT) for f in files)
        assert all(f.endswith(",S=%d" % os.path.getsize(f)) for f in files)


def test_delivered_to_writes_each_copy():
    with Lmtpgw(config={"delivered_to": True}) as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["a@example.test", "b@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        fa, fb = gw.only_message("a"), gw.only_message("b")
        assert fa.startswith(b"Delivered-To: a@example.test\r\n"), fa[:80]
        assert fb.startswith(b"Delivered-To: b@example.test\r\n"), fb[:80]
        pa, pb = gw.messages("a")[0], gw.messages("b")[0]
        assert os.stat(pa).st_ino != os.stat(pb).st_ino
