"""`lmtpgw deliver`: one message from standard input, one reply line per recipient on stdout,
an exit status per sysexits(3) (docs/deliver.md). The daemon is never started here: the command
builds the runtime, the spool and the dispatcher itself. Stores are real Maildirs."""
import os
import pwd
import re
import subprocess
import threading
import time

from harness import (VALGRIND, SLOW, MEMORY_FIGURES_MEAN_SOMETHING, Lmtpgw, binary, cstr,
                     split_trace)

DOMAIN = "example.test"
EX_OK, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, EX_TEMPFAIL = 0, 65, 67, 69, 75

REPLY_LINE = re.compile(r"^<([^>]*)>: (\d{3}) (\d\.\d{1,3}\.\d{1,3}) (.*)$")


def gateway(**kw):
    """alice, bob to Maildirs; carol to a Maildir under a file (451 4.3.0); nothing else routed."""
    routes = kw.pop("routes", None) or [("carol@" + DOMAIN, ["broken"]),
                                        ("*@" + DOMAIN, ["local"])]
    gw = Lmtpgw(routes=routes, **kw)
    blocker = os.path.join(gw.dir, "broken")
    with open(blocker, "w") as f:
        f.write("not a directory\n")
    gw.backends = 'broken: { driver = "maildir"; path = %s; };' % cstr(blocker + "/%{local}")
    gw.write_config()
    return gw


def deliver(gw, args, content, timeout=120):
    """Run `lmtpgw -c CONF deliver ARGS` with content on stdin; (rc, stdout lines, stderr)."""
    cmd = [binary(), "-c", gw.conf_path, "deliver"] + list(args)
    if VALGRIND:
        cmd = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
               "--errors-for-leak-kinds=definite", "--show-possibly-lost=no",
               "--log-file=" + gw.vg_log] + cmd
    p = subprocess.run(cmd, input=content, capture_output=True, timeout=timeout * SLOW,
                       cwd=gw.dir)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    if VALGRIND:
        with open(gw.vg_log) as f:
            vg = f.read()
        assert p.returncode != 99 and "ERROR SUMMARY" not in vg.replace(
            "ERROR SUMMARY: 0", ""), vg
    return p.returncode, out.splitlines(), err


def replies(lines):
    parsed = []
    for line in lines:
        m = REPLY_LINE.match(line)
        assert m, "not a reply line: %r" % line
        parsed.append((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
    return parsed


def message_lf(subject, extra=b""):
    return (b"From: <sender@example.test>\nTo: <alice@example.test>\nSubject: %s\n"
            b"Message-ID: <%s@deliver.test>\n\nline one\n.dot line\n\nlast line\n"
            % (subject.encode(), subject.encode()) + extra)


def test_deliver_stores_lf_input_as_crlf_and_prints_the_daemons_reply():
    gw = gateway()
    content = message_lf("lf")
    rc, out, err = deliver(gw, ["-f", "sender@example.test", "alice@" + DOMAIN], content)
    assert rc == EX_OK, (rc, out, err)
    [(rcpt, code, enh, text)] = replies(out)
    assert (rcpt, code, enh) == ("alice@" + DOMAIN, 250, "2.0.0"), out
    assert re.match(r"<alice@example\.test> stored \(local \S+\) \[[0-9a-f]+\.1\]$", text), text
    stored = gw.only_message("alice")
    trace = split_trace(stored, content.replace(b"\n", b"\r\n"))
    assert trace.startswith(b"Return-Path: <sender@example.test>\r\nReceived: by "
                            b"mx.lmtpgw.test (lmtpgw deliver, from userid %d)\r\n"
                            % os.getuid()), trace
    # logged like the daemon: one event=delivery line, on stderr
    assert re.search(r"event=delivery .*rcpt=<alice@example\.test> result=ok", err), err


def test_deliver_keeps_crlf_and_bare_cr_and_ends_the_last_line():
    gw = gateway()
    crlf = b"Subject: crlf\r\n\r\nkept\r\nbare\rcr and a mixed\nline\r\nno end"
    rc, out, err = deliver(gw, ["-f", "", "alice@" + DOMAIN], crlf)
    assert rc == EX_OK, (rc, out, err)
    stored = gw.only_message("alice")
    want = b"Subject: crlf\r\n\r\nkept\r\nbare\rcr and a mixed\r\nline\r\nno end\r\n"
    trace = split_trace(stored, want)
    assert trace.startswith(b"Return-Path: <>\r\n"), trace       # -f "": the null sender


def test_deliver_default_sender_is_the_invoking_user():
    gw = gateway()
    rc, out, err = deliver(gw, ["bob@" + DOMAIN], message_lf("default-sender"))
    assert rc == EX_OK, (rc, out, err)
    user = pwd.getpwuid(os.getuid()).pw_name
    assert gw.only_message("bob").startswith(
        b"Return-Path: <%s@mx.lmtpgw.test>\r\n" % user.encode())


def test_deliver_exit_status_per_outcome_one_line_per_recipient_in_order():
    gw = gateway()
    cases = [
        # (recipients, exit status, [(code, enhanced)] in order)
        (["ghost@nowhere.test"], EX_NOUSER, [(550, "5.1.1")]),
        (["bad address"], EX_DATAERR, [(501, "5.1.3")]),
        (["carol@" + DOMAIN], EX_TEMPFAIL, [(451, "4.3.0")]),
        # stored + refused: 75, so nothing is bounced that a retry could store
        (["alice@" + DOMAIN, "ghost@nowhere.test"], EX_TEMPFAIL, [(250, "2.0.0"), (550, "5.1.1")]),
        # refused for different reasons: the generic permanent status
        (["ghost@nowhere.test", "bad address"], EX_UNAVAILABLE, [(550, "5.1.1"), (501, "5.1.3")]),
        (["ghost@nowhere.test", "nobody@nowhere.test"], EX_NOUSER, [(550, "5.1.1"), (550, "5.1.1")]),
        (["bob@" + DOMAIN, "carol@" + DOMAIN, "alice@" + DOMAIN], EX_TEMPFAIL,
         [(250, "2.0.0"), (451, "4.3.0"), (250, "2.0.0")]),
    ]
    for rcpts, want_rc, want in cases:
        rc, out, err = deliver(gw, ["-f", "sender@example.test", "--"] + rcpts,
                               message_lf("codes"))
        got = replies(out)
        assert rc == want_rc, (rcpts, rc, out, err)
        assert [(c, e) for _r, c, e, _t in got] == want, (rcpts, out)
        assert [r for r, _c, _e, _t in got] == rcpts, (rcpts, out)
        for rcpt, _c, _e, text in got:
            assert text.startswith("<%s> " % rcpt), text   # reply_for_recipient's form


def test_deliver_sender_mailer_daemon_is_null_and_a_bad_sender_defers():
    """Postfix's pipe(8) passes MAILER-DAEMON for the null sender unless null_sender= is set:
    that is <>, not a bounce of the bounce. A sender that does not parse comes from the MTA's
    recipe: 451 4.1.7 and exit 75, even without soft_bounce, never a bounce."""
    gw = gateway()
    rc, out, err = deliver(gw, ["-f", "MAILER-DAEMON", "alice@" + DOMAIN], message_lf("dsn"))
    assert rc == EX_OK, (rc, out, err)
    assert gw.only_message("alice").startswith(b"Return-Path: <>\r\n")
    rc, out, err = deliver(gw, ["-f", "not an address@@", "bob@" + DOMAIN], message_lf("bad"))
    assert rc == EX_TEMPFAIL, (rc, out, err)
    assert replies(out)[0][1:3] == (451, "4.1.7"), out
    assert gw.messages("bob") == []


def test_deliver_too_big_is_552_dataerr_and_loop_is_554():
    gw = gateway(config={"max_message_size": 4096})
    rc, out, err = deliver(gw, ["-f", "s@example.test", "alice@" + DOMAIN],
                           message_lf("big", b"x" * 10000 + b"\n"))
    assert rc == EX_DATAERR, (rc, out, err)
    assert replies(out)[0][1:3] == (552, "5.3.4"), out
    assert gw.messages("alice") == []
    loop = b"".join(b"Received: from hop%d\n" % i for i in range(120)) + message_lf("loop")
    rc, out, err = deliver(gw, ["-f", "s@example.test", "alice@" + DOMAIN], loop)
    assert rc == EX_UNAVAILABLE, (rc, out, err)
    assert replies(out)[0][1:3] == (554, "5.4.6"), out
    assert gw.messages("alice") == []


def test_deliver_soft_bounce_makes_refusals_temporary():
    """The daemon's reply policy (reply_for_recipient): soft_bounce turns the 550 into 450."""
    gw = gateway(config={"soft_bounce": True})
    rc, out, err = deliver(gw, ["-f", "s@example.test", "ghost@nowhere.test"], message_lf("sb"))
    assert rc == EX_TEMPFAIL, (rc, out, err)
    assert replies(out)[0][1:3] == (450, "4.1.1"), out


def test_deliver_recipients_that_look_like_options():
    gw = gateway()
    rc, out, err = deliver(gw, ["-f", "s@example.test", "-a", "-dash@" + DOMAIN, "--",
                                "-f@" + DOMAIN], message_lf("dash"))
    assert rc == EX_OK, (rc, out, err)
    assert [r for r, *_ in replies(out)] == ["-dash@" + DOMAIN, "-f@" + DOMAIN], out
    assert len(gw.messages("-dash")) == 1 and len(gw.messages("-f")) == 1


def test_deliver_local_problems_are_tempfail():
    """A broken recipe or configuration must keep the mail queued (EX_USAGE / EX_CONFIG would
    bounce it with Postfix)."""
    gw = gateway()
    for args in (["-f"], [], ["--bogus", "alice@" + DOMAIN], ["-f", "s@example.test"]):
        rc, out, err = deliver(gw, args, message_lf("usage"))
        assert rc == EX_TEMPFAIL and out == [], (args, rc, out, err)
        assert "usage:" in err, err
    rc, out, err = deliver(gw, ["--sender-env", "LMTPGW_TEST_NO_SUCH_VARIABLE",
                                "alice@" + DOMAIN], message_lf("env"))
    assert rc == EX_TEMPFAIL and out == [] and "LMTPGW_TEST_NO_SUCH_VARIABLE" in err, (rc, err)
    p = subprocess.run([binary(), "-c", os.path.join(gw.dir, "missing.conf"), "deliver",
                        "alice@" + DOMAIN], input=b"x\n", capture_output=True, timeout=30)
    assert p.returncode == EX_TEMPFAIL, p
    assert gw.messages("alice") == []


def test_deliver_refuses_root_without_user_and_drops_to_user():
    if os.geteuid() != 0:
        return
    gw = gateway(config={"run_as_root": False})
    rc, out, err = deliver(gw, ["-f", "s@example.test", "alice@" + DOMAIN], message_lf("root"))
    assert rc == EX_TEMPFAIL, (rc, out, err)
    assert "refusing to deliver as root" in err, err
    assert out == [] and gw.messages("alice") == []
    # with user: it drops privileges first, and the stored file belongs to that user
    nobody = pwd.getpwnam("nobody")
    gw = gateway(config={"run_as_root": False, "user": "nobody", "group": "nogroup"})
    os.chmod(gw.dir, 0o755)
    for d in (gw.spool, gw.maildir_root):
        os.makedirs(d, exist_ok=True)
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    rc, out, err = deliver(gw, ["-f", "s@example.test", "alice@" + DOMAIN], message_lf("drop"))
    assert rc == EX_OK, (rc, out, err)
    assert "event=privileges_dropped user=nobody" in err, err
    [path] = gw.messages("alice")
    assert os.stat(path).st_uid == nobody.pw_uid


def test_deliver_60mb_message_with_bounded_memory():
    """60 MB of LF lines through a pipe: stored whole (CRLF), while the process's peak RSS stays
    far below the message size (spool: memory, then an unlinked file)."""
    gw = gateway(config={"max_message_size": "100M"})
    line = b"0123456789" * 7 + b"\n"                      # 71 bytes, 72 stored
    count = 60 * 1024 * 1024 // len(line)
    head = b"Subject: big\n\n"
    cmd = [binary(), "-c", gw.conf_path, "deliver", "-f", "s@example.test", "alice@" + DOMAIN]
    if VALGRIND:
        cmd = ["valgrind", "-q", "--log-file=" + gw.vg_log] + cmd
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, cwd=gw.dir)

    def feed():
        p.stdin.write(head)
        block = line * 1024
        for _ in range(count // 1024):
            p.stdin.write(block)
        p.stdin.write(line * (count % 1024))
        p.stdin.close()
    # Peak anonymous memory, sampled: ru_maxrss would also count the pages of the spool file
    # that a driver maps or the page cache lends (file-backed, not what the process holds).
    peak_anon_kb = [0]
    sampling = [True]

    def sample():
        while sampling[0]:
            try:
                with open("/proc/%d/status" % p.pid) as f:
                    for field in f:
                        if field.startswith("RssAnon:"):
                            peak_anon_kb[0] = max(peak_anon_kb[0], int(field.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
    sampler = threading.Thread(target=sample)
    sampler.start()
    writer = threading.Thread(target=feed)
    writer.start()
    out = p.stdout.read()
    _pid, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    writer.join()
    sampling[0] = False
    sampler.join()
    assert p.returncode == EX_OK, (p.returncode, out)
    [stored] = gw.messages("alice")
    size = os.path.getsize(stored)
    body = len(head) + 1 + count * (len(line) + 1)         # every LF became CRLF
    assert size > body and size - body < 400, (size, body)
    with open(stored, "rb") as f:
        f.seek(-(len(line) + 1) * 2, os.SEEK_END)
        assert f.read() == (line.replace(b"\n", b"\r\n")) * 2
    if MEMORY_FIGURES_MEAN_SOMETHING:
        anon_mb = peak_anon_kb[0] / 1024.0
        assert 0 < anon_mb < 24, "peak anonymous RSS %.1f MB for a 60 MB message" % anon_mb


def test_deliver_imap_verify_recipients_at_rcpt_and_append():
    """A backend whose RCPT-time check blocks (imap verify_recipients) runs in its worker pool on
    deliver's private loop, as in the daemon: Dovecot's unknown user is refused before the
    message is read (550 5.1.1, exit 67), a known one gets the message by APPEND."""
    from harness import require_dovecot
    from dovecot import DovecotServer
    require_dovecot()
    with DovecotServer() as dc:
        gw = Lmtpgw(routes=[("*@" + DOMAIN, ["inbox"])])
        pw = os.path.join(gw.dir, "master.pw")
        with open(pw, "w") as f:
            f.write(dc.master[1] + "\n")
        os.chmod(pw, 0o600)
        gw.backends = ('inbox: { driver = "imap"; url = %s; ca_file = %s; login = %s; '
                       'password_file = %s; verify_recipients = true; '
                       'unknown_user_permanent = true; };'
                       % (cstr("imap://127.0.0.1:%d" % dc.imap_port), cstr(dc.ca_file),
                          cstr(dc.master[0]), cstr(pw)))
        gw.write_config()
        rc, out, err = deliver(gw, ["-f", "s@example.test", "nobody@" + DOMAIN],
                               message_lf("imap-nobody"))
        assert rc == EX_NOUSER, (rc, out, err)
        assert replies(out)[0][1:3] == (550, "5.1.1"), out
        assert re.search(r"event=refused stage=rcpt .*rcpt=<nobody@example\.test> .*backend=inbox",
                         err), err
        rc, out, err = deliver(gw, ["-f", "s@example.test", "alice@" + DOMAIN, "nobody@" + DOMAIN,
                                    "bob@" + DOMAIN], message_lf("imap"))
        assert rc == EX_TEMPFAIL, (rc, out, err)               # stored and refused: 75
        assert [(r, c) for r, c, _e, _t in replies(out)] == [
            ("alice@" + DOMAIN, 250), ("nobody@" + DOMAIN, 550), ("bob@" + DOMAIN, 250)], out
        assert dc.count("alice") == 1 and dc.count("bob") == 1


def test_deliver_reply_lines_are_the_daemons_replies():
    """The same configuration served by the daemon: its replies (RCPT refusal, post-DATA
    verdicts) equal deliver's lines but for the transaction id."""
    from harness import expect
    gw = gateway()
    rcpts = ["alice@" + DOMAIN, "carol@" + DOMAIN]
    rc, out, err = deliver(gw, ["-f", "s@example.test", "ghost@nowhere.test"] + rcpts,
                           message_lf("parity"))
    assert rc == EX_TEMPFAIL, (rc, out, err)
    def same(line):   # without the transaction id and the Maildir file name
        return re.sub(r"\(local \S+\)", "(local FILE)", re.sub(r" \[[0-9a-f.]+\]$", "", line))
    lines = [same(l.split(": ", 1)[1]) for l in out]
    with gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250)
            ghost = c.cmd("RCPT TO:<ghost@nowhere.test>")
            for r in rcpts:
                expect(c.cmd("RCPT TO:<%s>" % r), 250)
            expect(c.cmd("DATA"), 354)
            c.send(message_lf("parity").replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
                   + b".\r\n")
            after = c.replies(len(rcpts))
    daemon = [str(ghost)] + [str(r) for r in after]
    daemon = [same(l) for l in daemon]
    # the daemon answers RCPT refusals without the transaction id
    assert [re.sub(r"^(\d{3})[ -]", r"\1 ", l) for l in daemon] == lines, (daemon, lines)


def test_deliver_webhook_verdicts_map_to_sysexits():
    """A real HTTP receiver answering per recipient (JSON results): the enhanced code it gives
    becomes the exit status, 5.7.1 -> 77 EX_NOPERM, 5.2.2 -> 73 EX_CANTCREAT, 5.0.0 (HTTP 404)
    -> 69 EX_UNAVAILABLE, 4.2.2 -> 75."""
    from webhook_receiver import Receiver
    verdicts = {"deny@example.test": (550, "5.7.1", "policy says no"),
                "full@example.test": (552, "5.2.2", "mailbox full"),
                "later@example.test": (452, "4.2.2", "over quota for now")}

    def rule(req):
        rcpt = req.headers["X-Lmtpgw-Recipients"]
        if rcpt == "gone@example.test":
            return {"status": 404}
        code, status, text = verdicts.get(rcpt, (250, "2.0.0", "ok"))
        return {"status": 200, "json": {"results": [{"rcpt": rcpt, "code": code,
                                                     "status": status, "text": text}]}}
    with Receiver(rule=rule) as r:
        gw = Lmtpgw(backends='hook: { driver = "webhook"; url = %s; allow_http = true; '
                    'timeout = 10; format = "raw"; };' % cstr(r.url),
                    routes=[("*@example.test", ["hook"])])
        for rcpt, want_rc, want in (("deny@", 77, (550, "5.7.1")), ("full@", 73, (552, "5.2.2")),
                                    ("gone@", EX_UNAVAILABLE, (550, "5.0.0")),
                                    ("later@", EX_TEMPFAIL, (452, "4.2.2")),
                                    ("fine@", EX_OK, (250, "2.0.0"))):
            rc, out, err = deliver(gw, ["-f", "s@example.test", rcpt + DOMAIN],
                                   message_lf("hook"))
            assert rc == want_rc and replies(out)[0][1:3] == want, (rcpt, rc, out, err)


def test_deliver_stores_nothing_when_the_writer_dies_half_way():
    """A pipe has no end-of-data mark: when the process that started deliver (the MTA writing
    the message) dies in the middle, end of file is not the end of the message. Nothing is
    stored (that MTA will try again), the log says why, exit 75."""
    import sys
    import time
    gw = gateway()
    log = os.path.join(gw.dir, "orphan.log")
    helper = ("import os, subprocess, sys, time\n"
              "p = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE,\n"
              "                     stdout=open(%r, 'ab'), stderr=subprocess.STDOUT)\n"
              "p.stdin.write(b'Subject: half\\n\\nthe first half of a message\\n')\n"
              "p.stdin.flush()\n"
              "for _ in range(1000):   # until deliver runs (it notes its parent at start)\n"
              "    if b'event=connect' in open(%r, 'rb').read(): break\n"
              "    time.sleep(0.01)\n"
              "os._exit(0)   # the writer dies: no close of its own, no wait\n" % (log, log))
    subprocess.run([sys.executable, "-c", helper, binary(), "-c", gw.conf_path, "deliver",
                    "-f", "s@example.test", "alice@" + DOMAIN], timeout=30, check=True)
    deadline = time.time() + 30 * SLOW
    text = ""
    while "event=disconnect" not in text and time.time() < deadline:
        time.sleep(0.05)
        with open(log) as f:
            text = f.read()
    assert "event=input_error" in text and "went away" in text, text
    assert re.search(r"^<alice@example\.test>: 451 4\.3\.0 ", text, re.M), text
    assert "exit=75" in text, text
    assert gw.messages("alice") == []


def test_deliver_delivery_deadline_answers_451_and_exits_without_waiting():
    """delivery_deadline as in the daemon: a backend that has not answered in time gets
    451 4.4.7 (exit 75) and the command exits then, without waiting for the worker; a discard
    recipient in the same call (an inline driver) is answered at once."""
    import time
    from webhook_receiver import Receiver
    with Receiver(rule=lambda req: {"status": 200, "delay": 6}) as r:
        gw = Lmtpgw(backends='hook: { driver = "webhook"; url = %s; allow_http = true; '
                    'timeout = 30; format = "raw"; }; trash: { driver = "discard"; };'
                    % cstr(r.url),
                    routes=[("slow@" + DOMAIN, ["hook"]), ("gone@" + DOMAIN, ["trash"])],
                    config={"delivery_deadline": "1s"})
        started = time.monotonic()
        rc, out, err = deliver(gw, ["-f", "s@example.test", "gone@" + DOMAIN, "slow@" + DOMAIN],
                               message_lf("deadline"))
        took = time.monotonic() - started
        assert rc == EX_TEMPFAIL, (rc, out, err)
        assert [c for _r, c, _e, _t in replies(out)] == [250, 451], out
        assert replies(out)[1][2] == "4.4.7", out
        assert took < 5 * SLOW, took
        assert "event=exit_with_late_deliveries" in err, err


def test_deliver_sender_from_the_environment():
    """--sender-env: Exim's pipe transport gives the sender as SENDER (empty for a bounce)."""
    gw = gateway()
    for value, want in (("env@example.test", b"<env@example.test>"), ("", b"<>")):
        p = subprocess.run([binary(), "-c", gw.conf_path, "deliver", "--sender-env", "SENDER",
                            "--", "bob@" + DOMAIN], input=message_lf("env"), capture_output=True,
                           timeout=30, env=dict(os.environ, SENDER=value))
        assert p.returncode == EX_OK, p
        newest = gw.messages("bob")[-1]
        assert any(gw.read(m).startswith(b"Return-Path: " + want + b"\r\n")
                   for m in gw.messages("bob")), newest
