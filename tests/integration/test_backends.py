"""The maildir and discard backends, routes to several backends, delivery failures."""
import os
import stat

from harness import Lmtpgw, expect, send_message, split_trace

CONTENT = b"Subject: backend\r\n\r\nbody\r\n"


def test_maildir_layout_and_modes():
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
                assert "stored" in r.text, r
        md = gw.maildir("alice")
        for sub in ("cur", "new", "tmp"):
            assert os.path.isdir(os.path.join(md, sub)), "Maildir lacks %s/" % sub
        f = gw.messages("alice")[0]
        name = os.path.basename(f)
        assert ":" not in name and "/" not in name, name
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, oct(os.stat(f).st_mode)
        assert stat.S_IMODE(os.stat(md).st_mode) == 0o700, oct(os.stat(md).st_mode)
        assert gw.messages("alice", sub="tmp") == []
        # the log has one key=value line per recipient result
        lines = gw.grep(r"event=delivery .*rcpt=<alice@example.test>")
        assert len(lines) == 1 and "result=ok" in lines[0] and "from=<s@example.test>" in lines[0], lines


def test_folder_from_detail():
    with Lmtpgw(local={"folder_from_detail": True}) as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test",
                                  ["alice+lists@example.test", "alice@example.test",
                                   "alice+Lists@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        assert len(gw.messages("alice")) == 1, gw.all_files()
        # lowercase_local_part (default) folds +Lists too
        assert len(gw.messages("alice", folder="lists")) == 2, gw.all_files()
        for sub in ("cur", "new", "tmp"):
            assert os.path.isdir(os.path.join(gw.maildir("alice", folder="lists"), sub))
        split_trace(gw.read(gw.messages("alice", folder="lists")[0]), CONTENT)


def test_detail_without_folder_option_goes_to_inbox():
    with Lmtpgw() as gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice+lists@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        assert len(gw.messages("alice")) == 1, gw.all_files()


def test_maildir_create_false():
    with Lmtpgw(local={"create": False}) as gw:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(gw.maildir("bob"), sub))
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 550, "5.1.1")
            expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(CONTENT + b".\r\n")
            expect(c.reply(), 250, "2.0.0")
        assert not os.path.exists(gw.maildir("alice")), "create=false must not create a Maildir"
        assert len(gw.messages("bob")) == 1


def test_discard_backend():
    with Lmtpgw(backends='trash: { driver = "discard"; };',
                routes=[("*@discard.test", ["trash"]), ("*@example.test", ["local"])]) as gw:
        with gw.session() as c:
            replies = send_message(c, "s@example.test",
                                   ["a@discard.test", "alice@example.test", "b@discard.test"], CONTENT)
            for r in replies:
                expect(r, 250, "2.0.0")
            assert "discarded" in replies[0].text and "discarded" in replies[2].text, replies
            assert "discarded" not in replies[1].text, replies[1]
        assert gw.all_files() == gw.messages("alice") and len(gw.all_files()) == 1, gw.all_files()
        assert gw.grep(r"rcpt=<a@discard.test>.*discarded"), "the log must say discarded"


def test_route_to_several_backends():
    copy = 'copy: { driver = "maildir"; path = "%s/copy/%%{local}"; };'
    gw = Lmtpgw(routes=[("*@example.test", ["local", "copy"])])
    gw.backends = copy % gw.dir
    gw.write_config()
    with gw:
        with gw.session() as c:
            for r in send_message(c, "s@example.test", ["alice@example.test", "bob@example.test"], CONTENT):
                expect(r, 250, "2.0.0")
        for u in ("alice", "bob"):
            split_trace(gw.only_message(u), CONTENT)
            d = os.path.join(gw.dir, "copy", u, "new")
            files = os.listdir(d)
            assert len(files) == 1, files
            split_trace(gw.read(os.path.join(d, files[0])), CONTENT)


def test_maildir_failure_is_temporary_and_isolated():
    # "any doubt is temporary" and "one recipient's failure never changes another's reply"
    broken = 'broken: { driver = "maildir"; path = "%s/afile/%%{local}"; };'
    gw = Lmtpgw(routes=[("*@broken.test", ["broken"]), ("*@both.test", ["local", "broken"]),
                        ("*@example.test", ["local"])])
    gw.backends = broken % gw.dir
    gw.write_config()
    with open(os.path.join(gw.dir, "afile"), "w") as f:
        f.write("a file where a directory should be\n")
    with gw:
        with gw.session() as c:
            replies = send_message(c, "s@example.test",
                                   ["x@broken.test", "alice@example.test", "y@both.test"], CONTENT)
            expect(replies[0], 451)
            assert replies[0].enhanced and replies[0].enhanced.startswith("4."), replies[0]
            expect(replies[1], 250, "2.0.0")
            # a route to two backends where one fails temporarily: 4xx (all must succeed)
            expect(replies[2], "4")
            assert replies[2].enhanced.startswith("4."), replies[2]
        assert len(gw.messages("alice")) == 1


def test_soft_bounce_turns_5xx_into_4xx():
    with Lmtpgw(config={"soft_bounce": True}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<nobody@unrouted.test>"), 450, "4.1.1")
