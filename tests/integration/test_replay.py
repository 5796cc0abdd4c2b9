"""`lmtpgw replay`: archived messages re-delivered to a backend, against the real S3 server
(s3rver behind the strict SigV4 front) and the real webhook receiver.

The receiver here behaves like a consumer that deduplicates by webhook-id: it answers 200 to
every request and records which ids it saw for the first time. A replay must give every
message the id its original delivery had (content digest + recipients), so running it twice,
or after an interruption, adds no new event.
"""
import json
import os
import pty
import re
import select
import subprocess
import threading
import time

from harness import VALGRIND, Lmtpgw, binary, conf_value, expect
from test_s3 import DOMAIN, creds_file, objects, transaction
from harness import start_s3server
from webhook_receiver import Receiver

SENDER = "sender@remote.test"


class DedupConsumer:
    """A receiver rule: 200 for everything; new ids are remembered (threads: the receiver is
    threaded)."""

    def __init__(self, status=200):
        self.status = status
        self.seen = []
        self.new = []
        self.lock = threading.Lock()

    def __call__(self, req):
        with self.lock:
            i = req.headers["webhook-id"]
            self.seen.append(i)
            if i not in self.new:
                self.new.append(i)
        return {"status": self.status}


def config(s3, hook_url, routes=None):
    s3b = {"driver": "s3", "endpoint": s3.endpoint, "allow_http": True, "bucket": s3.bucket,
           "credentials_file": creds_file(s3), "timeout": "20s", "connect_timeout": "2s"}
    hook = {"driver": "webhook", "url": hook_url, "allow_http": True, "timeout": 10,
            "format": "raw"}
    text = "archive: { %s }; hook: { %s };" % (
        " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s3b.items()),
        " ".join("%s = %s;" % (k, conf_value(v)) for k, v in hook.items()))
    return Lmtpgw(backends=text, routes=routes or [
        ("both@" + DOMAIN, ["archive", "hook"]), ("*@" + DOMAIN, ["archive"])])


def message(n):
    return (b"From: <%s>\r\nTo: <x@%s>\r\nSubject: replay %d\r\nMessage-ID: <replay-%d@t>\r\n\r\n"
            b"body %d \xc3\xa9\r\n" % (SENDER.encode(), DOMAIN.encode(), n, n, n))


def route_to(gw, backend):
    """The configuration as after adding a backend for everyone: replay sends an envelope's
    recipients only to a backend their route names (the daemon keeps running unchanged)."""
    gw.write_config(routes=[("*@" + DOMAIN, ["archive", backend])])


def archive(gw, n, rcpts):
    with gw.session() as c:
        for r in transaction(c, rcpts, message(n), sender=SENDER):
            expect(r, 250, "2.0.0")


def command(gw, *args):
    """lmtpgw replay, under valgrind too when the suite runs lmtpgw under valgrind (its errors
    and definite leaks make the exit status 99)."""
    cmd = [binary(), "-c", gw.conf_path, "replay"] + list(args)
    if VALGRIND:
        cmd = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
               "--errors-for-leak-kinds=definite", "--show-possibly-lost=no",
               "--log-file=" + os.path.join(gw.dir, "valgrind-replay-%p.log")] + cmd
    return cmd


def replay(gw, *args, stderr=subprocess.PIPE):
    p = subprocess.run(command(gw, *args), stdout=subprocess.PIPE, stderr=stderr, timeout=300)
    assert p.returncode != 99, "valgrind: %s" % [open(os.path.join(gw.dir, f)).read()
                                                  for f in os.listdir(gw.dir)
                                                  if f.startswith("valgrind-replay")]
    return p.returncode, p.stdout.decode("utf-8", "replace"), \
        (p.stderr or b"").decode("utf-8", "replace")


def test_replay_s3_to_webhook_same_ids_twice():
    """5 archived messages replayed to a webhook: 5 events. A sixth, delivered live to the
    webhook and the archive, keeps its live id (and body) when replayed. The second replay sends
    every message again under the id it had: the consumer accepts nothing new."""
    consumer = DedupConsumer()
    with start_s3server() as s3, Receiver(rule=consumer) as recv, config(s3, recv.url) as gw:
        for n in range(5):
            archive(gw, n, ["u%d@%s" % (n, DOMAIN), "bcc%d@%s" % (n, DOMAIN)])
        archive(gw, 5, ["both@" + DOMAIN])
        assert len(recv.requests) == 1
        live = recv.requests[0]
        live_id = live.headers["webhook-id"]
        assert len(objects(s3)[0]) == 6
        route_to(gw, "hook")        # the webhook added for everyone after the fact

        rc, out, err = replay(gw, "--from", "archive", "--to", "hook")
        assert rc == 0, (out, err)
        assert "6 messages, 6 delivered, 0 failed" in out, out
        assert "11 recipients delivered, 0 failed" in out, out
        assert "\r" not in err          # no progress when stderr is not a terminal
        assert len(recv.requests) == 7, len(recv.requests)
        assert len(consumer.new) == 6, consumer.new    # the live one was not new
        replayed_live = [q for q in recv.requests[1:] if q.headers["webhook-id"] == live_id]
        assert len(replayed_live) == 1
        assert replayed_live[0].body == live.body     # the archived object is what was posted
        by_rcpt = {q.headers["X-Lmtpgw-Recipients"]: q for q in recv.requests[1:]}
        assert by_rcpt["u3@%s, bcc3@%s" % (DOMAIN, DOMAIN)] is not None

        first = sorted(q.headers["webhook-id"] for q in recv.requests[1:])
        rc, out, err = replay(gw, "--from", "archive", "--to", "hook", "--jobs", "2")
        assert rc == 0, (out, err)
        second = sorted(q.headers["webhook-id"] for q in recv.requests[7:])
        assert second == first, (first, second)
        assert len(consumer.new) == 6, "a second replay made new events: %s" % consumer.new


def test_replay_dry_run_delivers_nothing():
    consumer = DedupConsumer()
    with start_s3server() as s3, Receiver(rule=consumer) as recv, config(s3, recv.url) as gw:
        for n in range(3):
            archive(gw, n, ["u%d@%s" % (n, DOMAIN)])
        route_to(gw, "hook")
        gets_before = len([q for q in s3.requests() if q["method"] == "GET"])
        rc, out, err = replay(gw, "--from", "archive", "--to", "hook", "--dry-run")
        assert rc == 0, (out, err)
        assert len(re.findall(r"^would deliver \S+\.eml sender=<%s> sha256=[0-9a-f]{64} to hook: <u\d@"
                              % re.escape(SENDER), out, re.M)) == 3, out
        assert "(dry run) archive -> hook: 3 messages" in out, out
        time.sleep(0.5)
        assert recv.requests == []
        # only listings and manifests were read, never an object
        gets = [q["url"] for q in s3.requests() if q["method"] == "GET"][gets_before:]
        assert not any(u.split("?")[0].endswith(".eml") for u in gets), gets


def test_replay_failing_target_exits_nonzero_and_names_it():
    consumer = DedupConsumer(status=503)
    with start_s3server() as s3, Receiver(rule=consumer) as recv, config(s3, recv.url) as gw:
        for n in range(2):
            archive(gw, n, ["u%d@%s" % (n, DOMAIN)])
        route_to(gw, "hook")
        rc, out, err = replay(gw, "--from", "archive", "--to", "hook")
        assert rc == 1, (rc, out, err)
        assert "2 messages, 0 delivered, 2 failed" in out, out
        failed = re.findall(r"^replay: FAILED (\S+) rcpt=<(u\d@[^>]+)>: hook 451 4\.3\.0", err, re.M)
        assert sorted(r for _, r in failed) == ["u0@" + DOMAIN, "u1@" + DOMAIN], err
        assert all(k.endswith(".eml") for k, _ in failed)


def test_replay_one_key_to_other_recipients_and_time_window():
    consumer = DedupConsumer()
    with start_s3server() as s3, Receiver(rule=consumer) as recv, config(s3, recv.url) as gw:
        archive(gw, 1, ["u1@" + DOMAIN])
        archive(gw, 2, ["u2@" + DOMAIN])
        key = objects(s3)[0][0]
        route_to(gw, "hook")
        rc, out, err = replay(gw, "--from", "archive", "--key", key, "--to", "hook",
                              "--rcpt", "ops@" + DOMAIN, "--rcpt", "audit@" + DOMAIN)
        assert rc == 0, (out, err)
        assert len(recv.requests) == 1
        assert recv.requests[0].headers["X-Lmtpgw-Recipients"] == "ops@%s, audit@%s" % (DOMAIN, DOMAIN)
        # nothing stored in the future, everything since yesterday
        rc, out, _ = replay(gw, "--from", "archive", "--to", "hook", "--since", "2999-01-01")
        assert rc == 0 and "0 messages" in out, out
        yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
        tomorrow = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
        rc, out, _ = replay(gw, "--from", "archive", "--to", "hook", "--since", yesterday,
                            "--until", tomorrow, "--dry-run")
        assert rc == 0 and "2 messages" in out, out
        rc, _, err = replay(gw, "--from", "archive", "--to", "nosuch")
        assert rc == 78 and "nosuch" in err
        rc, _, err = replay(gw, "--from", "archive", "--key", key, "--prefix", "x", "--to", "hook")
        assert rc == 64


def test_replay_maildir_to_webhook_idempotent():
    consumer = DedupConsumer()
    with Receiver(rule=consumer) as recv:
        hook = "hook: { driver = \"webhook\"; url = %s; allow_http = true; timeout = 10; format = \"raw\"; };" \
            % conf_value(recv.url)
        with Lmtpgw(backends=hook) as gw:       # *@example.test -> the Maildir backend "local"
            for n in range(3):
                archive(gw, n, ["alice@" + DOMAIN])
            rc, out, err = replay(gw, "--from", "local", "--rcpt", "alice@" + DOMAIN, "--to", "hook")
            assert rc == 0, (out, err)
            assert "3 messages, 3 delivered" in out, out
            assert len(recv.requests) == 3 and len(consumer.new) == 3
            assert all(q.body.startswith(b"Return-Path: <%s>" % SENDER.encode()) for q in recv.requests)
            rc, out, err = replay(gw, "--from", "local", "--rcpt", "alice@" + DOMAIN, "--to", "hook")
            assert rc == 0 and len(recv.requests) == 6 and len(consumer.new) == 3, consumer.new


def test_replay_progress_only_on_a_terminal():
    consumer = DedupConsumer()
    with start_s3server() as s3, Receiver(rule=consumer) as recv, config(s3, recv.url) as gw:
        archive(gw, 1, ["u1@" + DOMAIN])
        route_to(gw, "hook")
        master, slave = pty.openpty()
        try:
            p = subprocess.Popen(command(gw, "--from", "archive", "--to", "hook"),
                                 stdout=subprocess.PIPE, stderr=slave)
            os.close(slave)
            slave = None
            out, _ = p.communicate(timeout=300)
            tty = b""
            while select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                tty += chunk
        finally:
            if slave is not None:
                os.close(slave)
            os.close(master)
        assert p.returncode == 0, out
        assert b"\rreplay: 1/1 messages, 1 recipients delivered, 0 failed" in tty, tty
        assert b"1 messages, 1 delivered" in out


def test_replay_journaled_original_not_the_kept_report():
    """An archive of journal reports (journal_reports, journal_keep_report): replay sends the
    journaled original once, under its own digest, and skips the kept report."""
    from test_journal import EXCHANGE, JOURNAL, original, report
    consumer = DedupConsumer()
    with start_s3server() as s3, Receiver(rule=consumer) as recv:
        gw = config(s3, recv.url)
        gw.backends = gw.backends.replace("archive: { ", "archive: { journal_reports = true; ")
        gw.write_config()
        with gw:
            orig = original()
            with gw.session() as c:
                for r in transaction(c, [JOURNAL], report(orig, ["Bcc: dave@contoso.test"]),
                                     sender=EXCHANGE):
                    expect(r, 250, "2.0.0")
            assert len(objects(s3)[0]) == 2       # the original and the kept report
            route_to(gw, "hook")
            rc, out, err = replay(gw, "--from", "archive", "--to", "hook")
            assert rc == 0, (out, err)
            assert "2 messages, 1 delivered, 0 failed, 1 skipped" in out, out
            assert len(recv.requests) == 1
            assert recv.requests[0].body == orig
            assert recv.requests[0].headers["X-Lmtpgw-Recipients"] == JOURNAL


def utc_now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def replayed_recipients(recv, first=0):
    return sorted(q.headers["X-Lmtpgw-Recipients"] for q in recv.requests[first:])


def test_replay_window_selects_envelopes_not_objects():
    """--since/--until select each envelope (manifest) by when it was stored, not the object
    by its first PUT: the same message delivered again later (a retry, a later chunk, a second
    journaling) is a later envelope on the same object."""
    consumer = DedupConsumer()
    with start_s3server() as s3, Receiver(rule=consumer) as recv, config(s3, recv.url) as gw:
        archive(gw, 2, ["u1@" + DOMAIN])
        time.sleep(2.2)                 # S3 LastModified has whole seconds
        boundary = utc_now()
        time.sleep(1.2)
        archive(gw, 2, ["u2@" + DOMAIN])        # same content: the same object, a new envelope
        archive(gw, 3, ["u3@" + DOMAIN])
        assert len(objects(s3)[0]) == 2
        route_to(gw, "hook")
        rc, out, err = replay(gw, "--from", "archive", "--to", "hook", "--since", boundary)
        assert rc == 0, (out, err)
        assert replayed_recipients(recv) == ["u2@" + DOMAIN, "u3@" + DOMAIN], (out, err)
        assert "2 messages, 2 delivered, 0 failed" in out, out
        # and before the boundary: only the first envelope, although its object holds both
        n = len(recv.requests)
        rc, out, err = replay(gw, "--from", "archive", "--to", "hook", "--until", boundary)
        assert rc == 0, (out, err)
        assert replayed_recipients(recv, n) == ["u1@" + DOMAIN], (out, err)
        assert "1 messages, 1 delivered" in out, out


def test_replay_to_webhook_only_recipients_routed_there_same_id():
    """The live request to the webhook held only the recipients routed to it: the replay sends
    the same set (same webhook-id, no duplicate event) and never another recipient's mail."""
    consumer = DedupConsumer()
    with start_s3server() as s3, Receiver(rule=consumer) as recv, config(s3, recv.url) as gw:
        archive(gw, 1, ["both@" + DOMAIN, "alice@" + DOMAIN])     # alice: archive only
        archive(gw, 2, ["bob@" + DOMAIN])                          # never routed to hook
        assert len(recv.requests) == 1
        live = recv.requests[0]
        rc, out, err = replay(gw, "--from", "archive", "--to", "hook")
        assert rc == 0, (out, err)
        assert len(recv.requests) == 2, [q.headers["X-Lmtpgw-Recipients"] for q in recv.requests]
        again = recv.requests[1]
        assert again.headers["X-Lmtpgw-Recipients"] == "both@" + DOMAIN
        assert again.headers["webhook-id"] == live.headers["webhook-id"]
        assert len(consumer.new) == 1, consumer.new
        assert "2 messages, 1 delivered, 0 failed, 1 skipped" in out, out
        assert "1 recipients delivered, 0 failed, 2 left out (not routed to hook)" in out, out
        # --rcpt names the recipients explicitly: no route filter
        rc, out, err = replay(gw, "--from", "archive", "--to", "hook", "--rcpt", "bob@" + DOMAIN)
        assert rc == 0 and len(recv.requests) == 4, (out, err)


def maildir_replay_gateway(s3, config_extra=None):
    """Archive only at first; for the replay, *@ routes to the archive and the Maildir "local"."""
    s3b = {"driver": "s3", "endpoint": s3.endpoint, "allow_http": True, "bucket": s3.bucket,
           "credentials_file": creds_file(s3), "timeout": "20s", "connect_timeout": "2s"}
    text = "archive: { %s };" % " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s3b.items())
    return Lmtpgw(backends=text, config=config_extra, routes=[("*@" + DOMAIN, ["archive"])])


def test_replay_drops_privileges_to_user():
    if os.geteuid() != 0:
        return
    import pwd
    nobody = pwd.getpwnam("nobody")
    with start_s3server() as s3:
        gw = maildir_replay_gateway(s3)
        with gw:
            archive(gw, 1, ["alice@" + DOMAIN])
            # as root without `user` (and without run_as_root): refused, nothing stored
            cfg = dict(gw.config, run_as_root=False)
            gw.write_config(routes=[("*@" + DOMAIN, ["archive", "local"])], config=cfg)
            rc, out, err = replay(gw, "--from", "archive", "--to", "local")
            assert rc == 77, (rc, out, err)
            assert "refusing to replay as root" in err, err
            assert gw.all_files() == []
            # with user: the stored files are the user's, as the daemon's would be
            os.chmod(gw.dir, 0o755)
            for d in (gw.spool, gw.maildir_root):
                os.makedirs(d, exist_ok=True)
                os.chown(d, nobody.pw_uid, nobody.pw_gid)
            cfg.update(user="nobody", group="nogroup")
            gw.write_config(routes=[("*@" + DOMAIN, ["archive", "local"])], config=cfg)
            rc, out, err = replay(gw, "--from", "archive", "--to", "local")
            assert rc == 0, (rc, out, err)
            assert "event=privileges_dropped user=nobody" in err, err
            [path] = gw.messages("alice")
            for p in [path, os.path.dirname(path), gw.maildir("alice")]:
                assert os.stat(p).st_uid == nobody.pw_uid, p


def test_replay_twice_with_dedupe_db_stores_one_copy():
    with start_s3server() as s3:
        gw = maildir_replay_gateway(s3)
        gw.config["dedupe_db"] = os.path.join(gw.dir, "dedupe.sqlite")
        gw.write_config()
        with gw:
            archive(gw, 1, ["alice@" + DOMAIN])
            route_to(gw, "local")
            for _ in range(2):
                rc, out, err = replay(gw, "--from", "archive", "--to", "local")
                assert rc == 0, (rc, out, err)
                assert "1 recipients delivered, 0 failed" in out, out
            assert len(gw.messages("alice")) == 1, gw.messages("alice")


def test_replay_envelope_of_more_than_1000_recipients_not_truncated():
    """max_recipients allows up to 100000: an envelope of 1001 recipients is replayed whole."""
    with start_s3server() as s3:
        gw = maildir_replay_gateway(s3, {"max_recipients": 1500})
        gw.backends += ' trash: { driver = "discard"; };'
        gw.write_config()
        rcpts = ["r%04d@%s" % (i, DOMAIN) for i in range(1001)]
        with gw:
            archive(gw, 1, rcpts)
            route_to(gw, "trash")
            rc, out, err = replay(gw, "--from", "archive", "--to", "trash", "--dry-run")
            assert rc == 0, (rc, out, err)
            assert out.count(" <r") == 1001, out[-300:]
            rc, out, err = replay(gw, "--from", "archive", "--to", "trash")
            assert rc == 0, (rc, out, err)
            assert "1001 recipients delivered, 0 failed" in out, out
