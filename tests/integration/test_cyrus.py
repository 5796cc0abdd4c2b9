"""The imap backend against a real Cyrus IMAP 3.6.1 (Debian 12's, unpacked: tests/integration/cyrus.py).

Every test starts its own Cyrus (sasldb users alice/bob/carol with mailboxes, carol with a 64 KiB
quota, "master" allowed to act as anyone by proxyservers, a test CA) and its own lmtpgw with a
`master` login in master_format "sasl" (SASL PLAIN with an authorization id) over STARTTLS
verified against the test CA, talks LMTP to lmtpgw and checks what Cyrus really holds, as its
admin. Cyrus accepts a proxy login as ANY authorization id, so an unknown user is only noticed
by its missing INBOX (docs/backends/imap.md, "Unknown users").
"""
import os

from harness import RealServerMissing, Lmtpgw, Skip, conf_value, expect, split_trace

import debpkg
from cyrus import CyrusServer
from dovecot import make_ca

DOMAIN = "example.test"
SENDER = "sender@remote.test"


def cyrus(**kw):
    """A started CyrusServer, or Skip (suite "cyrus") when it cannot be had here."""
    server = CyrusServer(**kw)
    try:
        return server.start()
    except debpkg.Unavailable as e:
        raise RealServerMissing("cyrus", str(e))


def backend(cy, name="inbox", ca_file=None, **opts):
    pw = os.path.join(cy.tmpdir, "master.pw")
    with open(pw, "w") as f:
        f.write(cy.master[1] + "\n")
    os.chmod(pw, 0o600)
    settings = {"driver": "imap", "url": "imap://127.0.0.1:%d" % cy.imap_port,
                "ca_file": ca_file or cy.ca_file, "login": cy.master[0], "password_file": pw,
                "master_format": "sasl"}
    settings.update(opts)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v))
                                          for k, v in settings.items()))


def gateway(backends):
    return Lmtpgw(backends=backends, routes=[("*@" + DOMAIN, ["inbox"])])


def message(subject, size=None):
    head = (b"From: <%s>\r\nTo: <x@%s>\r\nSubject: %s\r\nMessage-ID: <%s@t>\r\n\r\n"
            % (SENDER.encode(), DOMAIN.encode(), subject.encode(), subject.encode()))
    body = b"caf\xc3\xa9 8-bit line\r\n.dot line\r\n" + b"x" * 1500 + b"\r\n"
    if size is not None:
        body = (b"0123456789" * 7 + b"\r\n") * (size // 72 + 1)
    return head + body


def transaction(c, rcpts, content, rcpt_codes=None):
    """MAIL, RCPTs (each expected 250 unless rcpt_codes says otherwise), DATA; the replies of
    the accepted recipients."""
    expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
    accepted = 0
    for i, r in enumerate(rcpts):
        want = (rcpt_codes or {}).get(i, (250, "2.1.5"))
        reply = c.cmd("RCPT TO:<%s>" % r)
        expect(reply, *want)
        accepted += reply.code == 250
    expect(c.cmd("DATA"), 354)
    wire = content.replace(b"\r\n.", b"\r\n..")
    c.send(wire + b".\r\n")
    return c.replies(accepted)


def test_cyrus_delivery_proxy_authorization_byte_exact():
    with cyrus() as cy, gateway(backend(cy)) as gw:
        assert cy.version == "3.6.1", cy.greeting
        content = message("both")
        c = gw.session()
        r = transaction(c, ["alice@" + DOMAIN, "bob@" + DOMAIN], content)
        for reply in r:
            expect(reply, 250, "2.0.0")
            assert " uid " in str(reply) and "/0)" not in str(reply), reply  # APPENDUID
        for user in ("alice", "bob"):
            msgs = cy.messages(user)
            assert len(msgs) == 1, (user, msgs)
            trace = split_trace(msgs[0][1], content)
            assert trace.startswith(b"Return-Path: <%s>\r\n" % SENDER.encode()), trace
        assert cy.count("carol") == 0
        assert cy.mailboxes() == ["user/alice", "user/bob", "user/carol"]


def test_cyrus_detail_folder_created_on_trycreate():
    with cyrus() as cy, gateway(backend(cy, folder_from_detail=True)) as gw:
        c = gw.session()
        first, second = message("first"), message("second")
        expect(transaction(c, ["bob+projects@" + DOMAIN], first)[0], 250, "2.0.0")
        expect(transaction(c, ["bob+projects@" + DOMAIN], second)[0], 250, "2.0.0")
        assert "user/bob/projects" in cy.mailboxes(), cy.mailboxes()
        stored = [raw for _uid, raw in cy.messages("bob", "projects")]
        assert len(stored) == 2
        split_trace(stored[0], first)
        split_trace(stored[1], second)
        assert cy.count("bob") == 0, "the +detail message also went into INBOX"


def test_cyrus_over_quota_is_452_or_552():
    """Cyrus says a bare `NO Over quota` (no [OVERQUOTA] code): still 452 4.2.2, and 552 5.2.2
    with overquota_permanent."""
    big = message("big", size=100 * 1024)
    with cyrus() as cy:
        be = backend(cy) + " " + backend(cy, "perm", overquota_permanent=True)
        with Lmtpgw(backends=be, routes=[("*@" + DOMAIN, ["inbox"]),
                                         ("*@perm.test", ["perm"])]) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN, "carol@" + DOMAIN], big)
            expect(r[0], 250, "2.0.0")
            expect(r[1], 452, "4.2.2")
            r = transaction(c, ["carol@perm.test"], big)
            expect(r[0], 552, "5.2.2")
            small = message("small")
            expect(transaction(c, ["carol@" + DOMAIN], small)[0], 250, "2.0.0")
        assert cy.count("alice") == 1
        assert [s for s in cy.subjects("carol")] == ["small"]


def test_cyrus_unknown_user_gets_no_mailbox():
    """Cyrus lets the proxy login act as "dave" and answers APPEND INBOX with [TRYCREATE]:
    lmtpgw must not CREATE it (nor dave's +detail folder). 450 4.1.1, or 550 5.1.1 with
    unknown_user_permanent; the known user in the same transaction is delivered."""
    with cyrus() as cy:
        be = (backend(cy, folder_from_detail=True) + " " +
              backend(cy, "perm", folder_from_detail=True, unknown_user_permanent=True))
        with Lmtpgw(backends=be, routes=[("*@" + DOMAIN, ["inbox"]),
                                         ("*@perm.test", ["perm"])]) as gw:
            c = gw.session()
            content = message("hello")
            r = transaction(c, ["dave@" + DOMAIN, "alice@" + DOMAIN, "dave+projects@" + DOMAIN],
                            content)
            expect(r[0], 450, "4.1.1")
            expect(r[1], 250, "2.0.0")
            expect(r[2], 450, "4.1.1")
            r = transaction(c, ["dave@perm.test", "erin+x@perm.test"], content)
            expect(r[0], 550, "5.1.1")
            expect(r[1], 550, "5.1.1")
            gw.wait_log(r"rcpt=<dave@perm.test> .*no INBOX: \[TRYCREATE\] for INBOX, nothing created")
            gw.wait_log(r"rcpt=<erin\+x@perm.test> .*Mailbox does not exist; no INBOX")
        assert cy.mailboxes() == ["user/alice", "user/bob", "user/carol"], cy.mailboxes()
        assert cy.count("alice") == 1


def test_cyrus_verify_recipients_refuses_unknown_user_at_rcpt():
    with cyrus() as cy:
        with gateway(backend(cy, verify_recipients=True, unknown_user_permanent=True)) as gw:
            c = gw.session()
            content = message("verified")
            r = transaction(c, ["alice@" + DOMAIN, "dave@" + DOMAIN, "bob@" + DOMAIN], content,
                            rcpt_codes={1: (550, "5.1.1")})
            expect(r[0], 250, "2.0.0")
            expect(r[1], 250, "2.0.0")
        assert cy.mailboxes() == ["user/alice", "user/bob", "user/carol"], cy.mailboxes()
        assert cy.count("alice") == 1 and cy.count("bob") == 1


def test_cyrus_starttls_verified_against_test_ca():
    """Every test here goes over STARTTLS verified against the test CA; a CA that did not sign
    Cyrus's certificate gets 451 4.7.5 and no login (nothing stored)."""
    with cyrus() as cy:
        other_dir = os.path.join(cy.tmpdir, "other")
        os.makedirs(other_dir)
        other_ca = make_ca(other_dir, "other", "some other CA")
        with gateway(backend(cy, ca_file=other_ca)) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN], message("untrusted"))
            expect(r[0], 451, "4.7.5")
        with gateway(backend(cy)) as gw:
            c = gw.session()
            r = transaction(c, ["alice@" + DOMAIN], message("trusted"))
            expect(r[0], 250, "2.0.0")
        assert cy.subjects("alice") == ["trusted"]


def test_cyrus_multiappend_batches_and_over_quota_batch_split():
    """Concurrent deliveries to one INBOX leave as MULTIAPPEND batches behind a slow relay,
    each with its own APPENDUID; a batch Cyrus refuses over carol's quota ("NO Over quota")
    goes again one by one: the big one 452 4.2.2, the others stored."""
    from test_imap import CutProxy
    from test_imap_batch import batch_sizes, parallel_transactions
    with cyrus() as cy:
        proxy = CutProxy(cy.imap_port, delay=0.3)
        try:
            be = backend(cy, url="imap://127.0.0.1:%d" % proxy.port)
            with gateway(be) as gw:
                subjects = ["batch%d" % i for i in range(6)]
                replies = parallel_transactions(
                    gw, [(["alice@" + DOMAIN], message(s)) for s in subjects])
                uids = set()
                for r in replies:
                    expect(r[0], 250, "2.0.0")
                    uids.add(r[0].text.split(" uid ")[1].split(")")[0])
                assert len(uids) == 6, replies
                sizes = batch_sizes(gw.log())
                assert max(sizes) >= 2, "no MULTIAPPEND batch: %s" % sizes
                jobs = [(["carol@" + DOMAIN], message("small%d" % i)) for i in range(4)]
                jobs.insert(2, (["carol@" + DOMAIN], message("big", size=100 * 1024)))
                replies = parallel_transactions(gw, jobs)
                for i, r in enumerate(replies):
                    expect(r[0], *((452, "4.2.2") if i == 2 else (250, "2.0.0")))
        finally:
            proxy.stop()
        assert sorted(cy.subjects("alice")) == sorted(subjects)
        assert sorted(cy.subjects("carol")) == ["small%d" % i for i in range(4)]
