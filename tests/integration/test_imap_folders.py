"""IMAP folder names from +detail against the real Dovecot (tests/integration/dovecot.py), issue
13 item 6: non-ASCII details are sent in modified UTF-7 (RFC 3501 5.1.3) instead of being
deferred for ever; details that cannot name a folder (list wildcards, empty hierarchy levels)
follow the rule of docs/backends/imap.md (INBOX with fallback_to_inbox, else 550 5.1.1); and a
folder the server refuses for any reason falls back to INBOX where configured.
"""
from harness import dot_stuff, expect

from test_imap import DOMAIN, SENDER, dovecot, gateway, imap_backend, message


def send(c, rcpt, content, utf8=False):
    """One transaction for one recipient (SMTPUTF8 when asked): the RCPT reply, and the reply
    after DATA when RCPT was accepted (else None)."""
    expect(c.cmd("MAIL FROM:<%s>%s" % (SENDER, " SMTPUTF8" if utf8 else "")), 250, "2.1.0")
    r = c.cmd("RCPT TO:<%s>" % rcpt)
    if r.code != 250:
        c.cmd("RSET")
        return r, None
    expect(c.cmd("DATA"), 354)
    c.send(dot_stuff(content) + b".\r\n")
    return r, c.reply()


def test_imap_non_ascii_detail_goes_to_its_folder_in_modified_utf7():
    """alice+föö@: Dovecot refuses the raw UTF-8 name ("not valid mUTF-7"), which deferred the
    message for ever; the name must go as "f&APYA9g-" and the message into that folder."""
    with dovecot() as dc:
        # one APPEND at a time, and the MULTIAPPEND path (the default)
        be = (imap_backend(dc, "inbox", folder_from_detail=True, multiappend=1) + " " +
              imap_backend(dc, "batch", folder_from_detail=True))
        routes = [("alice+f*@" + DOMAIN, ["inbox"]), ("*@" + DOMAIN, ["batch"])]
        with gateway(be, routes) as gw:
            c = gw.session()
            _, r = send(c, "alice+f\u00f6\u00f6@" + DOMAIN, message("foo"), utf8=True)
            expect(r, 250, "2.0.0")
            _, r = send(c, "alice+Entw\u00fcrfe@" + DOMAIN, message("drafts"), utf8=True)
            expect(r, 250, "2.0.0")
            log = gw.log()
            assert "inbox:250" in log and "batch:250" in log, log[-2000:]
        names = dc.list_mailboxes("alice")
        # (local parts are lowercased by default: "Entwürfe" arrives as "entwürfe")
        assert "f&APYA9g-" in names and "entw&APw-rfe" in names, names
        assert len(dc.messages("alice", "f&APYA9g-")) == 1
        assert len(dc.messages("alice", "entw&APw-rfe")) == 1
        assert dc.count("alice") == 0


def test_imap_detail_ampersand_encoded():
    """"&" starts an encoded run in modified UTF-7: a detail "a&b" is sent as "a&-b"."""
    with dovecot() as dc:
        with gateway(imap_backend(dc, folder_from_detail=True)) as gw:
            c = gw.session()
            _, r = send(c, "alice+r&d@" + DOMAIN, message("rd"))
            expect(r, 250, "2.0.0")
        assert "r&-d" in dc.list_mailboxes("alice"), dc.list_mailboxes("alice")
        assert len(dc.messages("alice", "r&-d")) == 1


# (a trailing or doubled "." cannot reach us: the address itself is refused at RCPT, 501 5.1.3)
UNUSABLE = ["a*b", "50%", ".hidden", "a/", "/x", "a//b", "x/.y"]


def test_imap_unusable_details_go_to_inbox_with_fallback():
    """Details with list wildcards or an empty hierarchy level name no folder: with
    fallback_to_inbox (the default) each message goes into INBOX and no odd folder appears."""
    with dovecot() as dc:
        with gateway(imap_backend(dc, folder_from_detail=True)) as gw:
            c = gw.session()
            for d in UNUSABLE:
                rcpt_reply, r = send(c, "alice+%s@%s" % (d, DOMAIN), message("x"))
                expect(rcpt_reply, 250, "2.1.5")
                expect(r, 250, "2.0.0")
        names = dc.list_mailboxes("alice")
        assert names == ["INBOX"], "unexpected folders: %s" % names
        assert dc.count("alice") == len(UNUSABLE)


def test_imap_unusable_detail_refused_without_fallback():
    """With fallback_to_inbox = false such a detail is refused for good: 550 5.1.1 (a bounce
    now rather than retries for days); a usable detail beside it is still delivered."""
    with dovecot() as dc:
        be = imap_backend(dc, folder_from_detail=True, fallback_to_inbox=False)
        with gateway(be) as gw:
            c = gw.session()
            for d in ("a*b", ".hidden"):
                rcpt_reply, r = send(c, "alice+%s@%s" % (d, DOMAIN), message("x"))
                reply = r if r is not None else rcpt_reply
                expect(reply, 550, "5.1.1")
            _, r = send(c, "alice+ok@" + DOMAIN, message("ok"))
            expect(r, 250, "2.0.0")
        assert sorted(dc.list_mailboxes("alice")) == ["INBOX", "ok"], dc.list_mailboxes("alice")
        assert dc.count("alice") == 0


def test_imap_folder_refused_by_server_falls_back_to_inbox():
    """A name the server refuses at APPEND without [TRYCREATE] (Dovecot: "NO [CANNOT] Invalid
    mailbox name: Begins with '~'") is delivered into INBOX with fallback_to_inbox, instead of
    451 for ever; without it the answer stays temporary (451 4.3.0), as before."""
    with dovecot() as dc:
        be = (imap_backend(dc, "inbox", folder_from_detail=True) + " " +
              imap_backend(dc, "strict", folder_from_detail=True, fallback_to_inbox=False))
        routes = [("*@" + DOMAIN, ["inbox"]), ("*@strict.test", ["strict"])]
        with gateway(be, routes) as gw:
            c = gw.session()
            _, r = send(c, "alice+~x@" + DOMAIN, message("tilde"))
            expect(r, 250, "2.0.0")
            assert "refused_folder=~x" in gw.log(), gw.log()[-2000:]
            _, r = send(c, "bob+~x@strict.test", message("tilde"))
            expect(r, 451, "4.3.0")
        assert dc.count("alice") == 1
        assert dc.count("bob") == 0


def test_imap_dedupe_finds_a_copy_stored_in_inbox_by_fallback():
    """dedupe + fallback_to_inbox: the folder is refused, the copy goes to INBOX, and the OK
    of that APPEND is lost. The MTA's retry must find the copy in INBOX (where the fallback put
    it), not only in the refused folder, and store nothing twice."""
    from test_imap import SwallowReplyProxy, transaction
    import time
    with dovecot() as dc:
        # The refused APPEND sends its 2 MB literal too (LITERAL+ or not, the server answers
        # after it); the answer lost is the one to the INBOX APPEND that follows.
        proxy = SwallowReplyProxy(dc.imaps_port, swallow_after=3 * 1024 * 1024)
        try:
            be = imap_backend(dc, url="imaps://127.0.0.1:%d" % proxy.port, dedupe=True,
                              folder_from_detail=True)
            with gateway(be) as gw:
                c = gw.session()
                big = message("fallback-dedupe", size=2 * 1024 * 1024)
                r = transaction(c, ["alice+~x@" + DOMAIN], big)
                expect(r[0], 451, "4.4.2")
                assert proxy.swallowed >= 1
                time.sleep(0.3)
                assert dc.count("alice") == 1, "the server should have stored it in INBOX"
                proxy.swallow_after = None
                c = gw.session()
                r = transaction(c, ["alice+~x@" + DOMAIN], big)
                expect(r[0], 250, "2.0.0")
                assert "already stored" in str(r[0]), r[0]
                assert dc.count("alice") == 1, "stored twice"
        finally:
            proxy.stop()
