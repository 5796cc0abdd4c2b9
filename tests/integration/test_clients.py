"""Real LMTP clients: swaks --protocol LMTP, Postfix smtp-source -L, Python smtplib.LMTP."""
import re
import shutil
import smtplib
import subprocess

from harness import Lmtpgw, RealServerMissing, SLOW, split_trace


def need(tool):
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise RealServerMissing("lmtp-clients", "%s not installed" % tool)
    return path


def swaks(gw, *args):
    cmd = [need("swaks"), "--protocol", "LMTP", "--server", "127.0.0.1", "--port", str(gw.port),
           "--helo", "swaks.test", "--timeout", "30"] + list(args)
    p = subprocess.run(cmd, capture_output=True, timeout=60 * SLOW)
    return p.returncode, p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")


def server_lines(transcript):
    """The server's reply lines in a swaks transcript ('<-  250 ...')."""
    return [l[4:] for l in transcript.splitlines() if l.startswith("<-  ") or l.startswith("<** ")]


def test_swaks_single_recipient():
    with Lmtpgw() as gw:
        rc, out = swaks(gw, "--from", "sender@example.test", "--to", "alice@example.test",
                        "--header", "Subject: swaks single", "--body", "Hello from swaks\n..dot line\n")
        assert rc == 0, "swaks failed (%d):\n%s" % (rc, out)
        stored = [l for l in server_lines(out) if l.startswith("250 2.0.0 <alice@example.test>")]
        assert len(stored) == 1, "expected one per-recipient 250 after the dot:\n%s" % out
        body = gw.only_message("alice")
        assert b"Subject: swaks single\r\n" in body
        assert b"\r\nHello from swaks\r\n..dot line\r\n" in body, body
        assert body.startswith(b"Return-Path: <sender@example.test>\r\nReceived: from swaks.test "), body[:200]


def test_swaks_multiple_recipients():
    with Lmtpgw() as gw:
        rc, out = swaks(gw, "--from", "sender@example.test",
                        "--to", "alice@example.test,bob@example.test,carol@example.test",
                        "--header", "Subject: swaks multi", "--body", "multi body")
        assert rc == 0, "swaks failed (%d):\n%s" % (rc, out)
        lines = server_lines(out)
        after_data = lines[lines.index(next(l for l in lines if l.startswith("354"))) + 1:]
        per_rcpt = [l for l in after_data if l.startswith("250 ")]
        # swaks reads the LMTP replies after the dot: one per recipient, in RCPT order
        order = [re.search(r"<([^>]+)>", l).group(1) for l in per_rcpt if "<" in l]
        assert order[:3] == ["alice@example.test", "bob@example.test", "carol@example.test"], out
        for u in ("alice", "bob", "carol"):
            body = gw.only_message(u)
            assert b"Subject: swaks multi\r\n" in body and b"multi body" in body
        assert len(gw.all_files()) == 3, gw.all_files()


def test_swaks_mixed_recipients():
    with Lmtpgw() as gw:
        rc, out = swaks(gw, "--from", "sender@example.test",
                        "--to", "alice@example.test,nobody@unrouted.test,bob@example.test",
                        "--body", "mixed")
        # swaks exits non-zero when a recipient is refused; what matters is what was stored
        lines = server_lines(out)
        assert any(l.startswith("550 5.1.1") for l in lines), out
        assert len(gw.messages("alice")) == 1 and len(gw.messages("bob")) == 1, out
        assert len(gw.all_files()) == 2, gw.all_files()


def test_smtp_source_many_sessions():
    src = need("smtp-source")
    count = 200
    with Lmtpgw() as gw:
        cmd = [src, "-L", "-s", "5", "-m", str(count), "-r", "2", "-t", "rcpt@example.test",
               "-f", "s@example.test", "-l", "2048", "127.0.0.1:%d" % gw.port]
        p = subprocess.run(cmd, capture_output=True, timeout=120 * SLOW)
        assert p.returncode == 0, "smtp-source failed (%d): %s %s" % (p.returncode, p.stdout, p.stderr)
        # -r 2 -t rcpt@d: recipients rcpt@d and 2rcpt@d (checked with an smtp-sink dump)
        for user in ("rcpt", "2rcpt"):
            files = gw.messages(user)
            assert len(files) == count, "%s: %d files in new/, expected %d" % (user, len(files), count)
            assert gw.messages(user, sub="tmp") == [], "files left in tmp/"
            ids, txids = set(), set()
            for f in files:
                data = gw.read(f)
                hdr_end = data.index(b"\r\n\r\n")
                body = data[hdr_end + 4:]
                # -l counts payload in 80-byte CRLF lines; a last partial line gets its own CRLF
                assert len(body) == 2048 + 2, "%s: body %d bytes, expected 2050" % (f, len(body))
                assert set(body) <= set(b"0123456789X\r\n"), f
                m = re.search(rb"\r\nMessage-Id: (<[^>]+>)", data)
                assert m, "no Message-Id in %s" % f
                ids.add(m.group(1))
                t = re.search(rb"with LMTP id (\S+);", data)
                assert t, "no Received id in %s" % f
                txids.add(t.group(1))
                # Maildir name carries the size: ",S=<bytes>"
                s = re.search(r",S=(\d+)", f)
                assert s and int(s.group(1)) == len(data), "%s: S= does not match size %d" % (f, len(data))
            assert len(ids) == count, "%s: %d distinct Message-Ids for %d files: duplicates" % (user, len(ids), count)
            assert len(txids) == count, "%s: %d distinct transaction ids" % (user, len(txids))
        assert len(gw.all_files()) == 2 * count
        assert len(gw.grep(r"event=delivery .*result=ok")) == 2 * count


def test_smtplib_lmtp_single_recipient():
    # smtplib.LMTP reads only one reply after DATA: single recipient only (cpython issue 76984)
    with Lmtpgw() as gw:
        s = smtplib.LMTP("127.0.0.1", gw.port, local_hostname="smtplib.test", timeout=30 * SLOW)
        try:
            s.ehlo_or_helo_if_needed()          # LMTP class sends LHLO
            assert s.does_esmtp, "LHLO not understood by smtplib"
            for ext in ("pipelining", "enhancedstatuscodes", "8bitmime", "size", "chunking",
                        "binarymime", "smtputf8"):
                assert s.has_extn(ext), "smtplib does not see %s" % ext
            msg = (b"From: s@example.test\r\nTo: alice@example.test\r\nSubject: smtplib\r\n\r\n"
                   b"line one\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9 8bit\r\n")
            refused = s.sendmail("s@example.test", ["alice@example.test"], msg,
                                 mail_options=["BODY=8BITMIME"])
            assert refused == {}, refused
            code, text = s.noop()
            assert code == 250 and text.startswith(b"2.0.0"), (code, text)
        finally:
            s.quit()
        stored = gw.only_message("alice")
        split_trace(stored, msg)
