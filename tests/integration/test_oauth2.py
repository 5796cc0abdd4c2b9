"""OAuth2 for the imap backend (SASL XOAUTH2 and OAUTHBEARER) and the webhook bearer token,
against a real Dovecot 2.3 whose oauth2 passdb introspects every token over TLS at a real
authorization server (npm oauth2-mock-server behind contrib/test-servers/oauth2/server.mjs).

The authorization server counts its token requests per grant: the tests check how many lmtpgw
made (one per identity while a token is valid; one refresh for 32 concurrent deliveries).
"""
import contextlib
import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request

from harness import (SLOW, Lmtpgw, Skip, binary, conf_value, expect, free_port,
                     require_dovecot)

from dovecot import DovecotServer
from oauth2server import (CERT_CLIENT_ID, CLIENT_ID, CLIENT_SECRET, JWT_BEARER, REFRESH_USER, SERVICE_ACCOUNT,
                          OAuth2Server)

DOMAIN = "example.test"
SENDER = "sender@remote.test"
USERS = {"alice@" + DOMAIN: "alice-pw", "bob@" + DOMAIN: "bob-pw"}
M365_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"


@contextlib.contextmanager
def servers(lifetime=3600, users=USERS):
    """(Dovecot with the oauth2 passdbs, the authorization server), both running."""
    require_dovecot()
    with OAuth2Server(lifetime=lifetime) as az:
        oauth2 = {"introspect_url": az.introspect_url,
                  "introspect_app_url": az.introspect_app_url, "ca_file": az.ca_file}
        with DovecotServer(users=users, quotas={}, oauth2=oauth2) as dc:
            yield dc, az


def secret_file(dc, name, text, mode=0o600):
    path = os.path.join(dc.tmpdir, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


def backend(dc, az, grant, mechanism="xoauth2", name="inbox", **opts):
    """libconfig text of an imap backend logging in to each mailbox with an OAuth2 token."""
    s = {"driver": "imap", "url": "imap://127.0.0.1:%d" % dc.imap_port, "ca_file": dc.ca_file,
         "login_mode": "user", "user": "%{user}@%{domain}", "auth_mechanism": mechanism,
         "oauth2_grant": grant, "oauth2_ca_file": az.ca_file,
         # generous: under valgrind the first TLS handshake alone can take seconds
         "oauth2_timeout": "30s"}
    if grant in ("client_credentials", "refresh_token"):
        s.update(oauth2_token_url=az.token_url, oauth2_client_id=CLIENT_ID,
                 oauth2_client_secret_file=secret_file(dc, "client.secret", CLIENT_SECRET))
    if grant == "client_credentials":
        s["oauth2_scope"] = M365_SCOPE
    if grant == "refresh_token":
        s["oauth2_refresh_token_file"] = secret_file(dc, "refresh.token", az.refresh_token)
    if grant == "jwt_bearer":
        s.update(oauth2_key_file=az.service_account_file, oauth2_scope=GOOGLE_SCOPE)
    s.update(opts)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s.items()
                                           if v is not None))


def gateway(backends, route_to="inbox", **kw):
    return Lmtpgw(backends=backends, routes=[("*@" + DOMAIN, [route_to])], **kw)


def message(subject="oauth2"):
    return (b"From: <%s>\r\nTo: <x@%s>\r\nSubject: %s\r\nMessage-ID: <%s.%s@t>\r\n\r\nhello\r\n"
            % (SENDER.encode(), DOMAIN.encode(), subject.encode(), subject.encode(),
               os.urandom(4).hex().encode()))


def deliver(gw, rcpt, subject="oauth2"):
    """One message to one recipient over its own LMTP session; the reply after DATA."""
    c = gw.session()
    try:
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        expect(c.cmd("RCPT TO:<%s>" % rcpt), 250)
        expect(c.cmd("DATA"), 354)
        c.send(message(subject) + b".\r\n")
        r = c.reply()
        c.cmd("QUIT")
        return r
    finally:
        c.close()


def token_for(az, data):
    ctx = ssl.create_default_context(cafile=az.ca_file)
    req = urllib.request.Request(az.token_url, data=urllib.parse.urlencode(data).encode())
    return json.loads(urllib.request.urlopen(req, context=ctx, timeout=10).read())


def dovecot_logins(dc, user, method):
    time.sleep(0.3)
    return [l for l in dc.log().splitlines()
            if "imap-login: Info: Login: user=<%s>" % user in l and "method=%s" % method in l]


def no_secrets(gw, *secrets):
    log = gw.log()
    for s in secrets:
        assert s and s not in log, "a secret appears in lmtpgw's log"


# --- one delivery per grant and mechanism ------------------------------------------------------

def test_oauth2_client_credentials_xoauth2_one_token_for_every_mailbox():
    with servers() as (dc, az):
        # debug logging: not even there may a secret or a token appear
        with gateway(backend(dc, az, "client_credentials"), debug=True) as gw:
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            expect(deliver(gw, "bob@" + DOMAIN), 250, "2.0.0")
            # the app-only token serves every mailbox: one request
            assert az.token_requests("client_credentials", "ok") == 1, az.stats()
            assert dovecot_logins(dc, "bob@" + DOMAIN, "XOAUTH2"), dc.log()[-2000:]
            no_secrets(gw, CLIENT_SECRET, *az.stats()["tokens"])
        assert dc.count("alice@" + DOMAIN) == 1
        assert dc.count("bob@" + DOMAIN) == 1


def test_oauth2_refresh_token_oauthbearer():
    with servers() as (dc, az):
        with gateway(backend(dc, az, "refresh_token", "oauthbearer")) as gw:
            expect(deliver(gw, REFRESH_USER), 250, "2.0.0")
            assert az.token_requests("refresh_token", "ok") == 1, az.stats()
            assert dovecot_logins(dc, REFRESH_USER, "OAUTHBEARER"), dc.log()[-2000:]
            # the token is the account's: another mailbox refuses it, and that is never a bounce
            expect(deliver(gw, "bob@" + DOMAIN), 451, "4.7.0")
            no_secrets(gw, CLIENT_SECRET, az.refresh_token)
        assert dc.count(REFRESH_USER) == 1
        assert dc.count("bob@" + DOMAIN) == 0


def test_oauth2_jwt_bearer_token_per_mailbox_subject():
    with servers() as (dc, az):
        with gateway(backend(dc, az, "jwt_bearer")) as gw:
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            expect(deliver(gw, "bob@" + DOMAIN), 250, "2.0.0")
            expect(deliver(gw, "bob@" + DOMAIN), 250, "2.0.0")
            # one token per subject (domain-wide delegation: sub = the mailbox)
            assert az.token_requests(JWT_BEARER, "ok") == 2, az.stats()
            assert az.token_requests(JWT_BEARER, "failed") == 0, az.log()
            with open(az.service_account_file) as f:
                key = json.load(f)["private_key"]
            no_secrets(gw, key.splitlines()[1])
        assert dc.count("alice@" + DOMAIN) == 1
        assert dc.count("bob@" + DOMAIN) == 2


def test_oauth2_jwt_bearer_identities_bounded_least_recently_used_dropped():
    # A token per mailbox: with oauth2_max_identities = 2 a third mailbox drops the token
    # used least recently (its next delivery asks anew); the others stay cached.
    users = dict(USERS, **{"carol@" + DOMAIN: "carol-pw"})
    with servers(users=users) as (dc, az):
        with gateway(backend(dc, az, "jwt_bearer", max_idle=0, oauth2_max_identities=2)) as gw:
            for rcpt, requests in (("alice", 1), ("bob", 2), ("alice", 2), ("carol", 3),
                                   ("alice", 3), ("carol", 3), ("bob", 4), ("carol", 4),
                                   ("alice", 5)):
                expect(deliver(gw, rcpt + "@" + DOMAIN), 250, "2.0.0")
                assert az.token_requests(JWT_BEARER, "ok") == requests, \
                    "after %s: %s" % (rcpt, az.stats())
        assert dc.count("alice@" + DOMAIN) == 4
        assert dc.count("carol@" + DOMAIN) == 3


def test_oauth2_token_file_reread_when_it_changes():
    with servers() as (dc, az):
        cc = {"grant_type": "client_credentials", "client_id": CLIENT_ID,
              "client_secret": CLIENT_SECRET, "scope": M365_SCOPE}
        path = secret_file(dc, "access.token", token_for(az, cc)["access_token"])
        # max_idle 0: every delivery logs in (a pooled connection stays logged in)
        with gateway(backend(dc, az, "token_file", oauth2_token_file=path, max_idle=0)) as gw:
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            # the program that keeps the file renews it after the server stopped taking
            # the old token: lmtpgw reads the new one
            az.revoke_all()
            expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
            new = token_for(az, cc)["access_token"]
            tmp = path + ".new"
            with open(tmp, "w") as f:
                f.write(new + "\n")
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            no_secrets(gw, new)
        assert dc.count("alice@" + DOMAIN) == 2


# --- the cache: expiry, revocation, endpoint down, one refresh for many ------------------------

def test_oauth2_token_expiring_mid_run_is_refreshed_before_it_expires():
    # 4 s tokens: lmtpgw replaces each after 3 s (a quarter of its lifetime early); every
    # delivery logs in anew (max_idle 0), and none may fail while tokens come and go.
    with servers(lifetime=4) as (dc, az):
        with gateway(backend(dc, az, "client_credentials", max_idle=0)) as gw:
            replies = []
            until = time.monotonic() + 12      # three lifetimes
            while time.monotonic() < until or len(replies) < 6:
                replies.append(deliver(gw, "alice@" + DOMAIN))
                time.sleep(0.3)
            for r in replies:
                expect(r, 250, "2.0.0")
            n = az.token_requests("client_credentials", "ok")
            # at least one per lifetime that passed (slower under valgrind: fewer deliveries)
            assert 2 <= n <= 6, "%d token requests in 12 s of 4 s tokens: %s" % (n, az.stats())
            # and none used after it expired: Dovecot refused no token (the user passdb's
            # "did not match" for an app token is expected: the app passdb takes it)
            refused = [l for l in dc.log().splitlines()
                       if "oauth2 failed" in l and "did not match" not in l]
            assert not refused, "\n".join(refused)
        assert dc.count("alice@" + DOMAIN) == len(replies)


def test_oauth2_revoked_token_refreshed_once_then_451():
    with servers() as (dc, az):
        with gateway(backend(dc, az, "client_credentials", max_idle=0)) as gw:
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            assert az.token_requests() == 1
            # the cached token is revoked: the login is refused, one new token, delivered
            az.revoke_all()
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            assert az.token_requests() == 2, az.stats()
            # every token refused from now on: one refresh, then 451 4.7.0 (never a bounce)
            az.revoke_all()
            az.set(revoke_new=True)
            expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
            assert az.token_requests() == 3, "refreshed more than once: %s" % az.stats()
        assert dc.count("alice@" + DOMAIN) == 2


def test_oauth2_token_endpoint_down_451_and_breaker():
    with servers() as (dc, az):
        be = backend(dc, az, "client_credentials", breaker_failures=2, breaker_cooloff="60s")
        port = free_port()
        with gateway(be, config={"metrics_listen": "127.0.0.1:%d" % port}) as gw:
            az.set(mode="down")               # 503 from the token endpoint
            expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
            az.kill()                          # nothing listening any more
            expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
            # two failures in a row: the breaker holds the backend down, at RCPT already
            c = gw.session()
            expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            expect(c.cmd("RCPT TO:<alice@%s>" % DOMAIN), 451, "4.4.1")
            c.close()
            metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                             timeout=5).read().decode()
            assert re.search(r'lmtpgw_oauth2_token_requests_total\{backend="inbox",'
                             r'result="failed"\} 2\b', metrics), metrics
            assert 'lmtpgw_backend_up{backend="inbox"} 0' in metrics, metrics
            assert "event=backend_down backend=inbox" in gw.log()
            no_secrets(gw, CLIENT_SECRET)
        assert dc.count("alice@" + DOMAIN) == 0


def test_oauth2_failed_refresh_keeps_the_valid_token_until_it_expires():
    # 24 s tokens: lmtpgw starts refreshing 6 s early (a quarter of the lifetime). The token
    # endpoint goes down right after a token was issued: the deliveries inside the refresh
    # margin still get 250 with the token that is still valid, the failed refresh is retried
    # after a back-off (not at every delivery), and only once the token has really expired
    # is it 451 4.7.0.
    lifetime = int(24 * SLOW)
    with servers() as (dc, az):
        with gateway(backend(dc, az, "client_credentials", max_idle=0)) as gw:
            # warm up (the first TLS handshakes are slow under valgrind), then have the token
            # replaced at a known time: revoked, refused at login, a new one of `lifetime`
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            az.set(lifetime=lifetime)
            az.revoke_all()
            t0 = time.monotonic()
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            t1 = time.monotonic()
            az.set(mode="down")
            assert az.token_requests("client_credentials", "ok") == 2, az.stats()
            # asked for between t0 and t1: refresh from t1 + 3/4 lifetime at the latest,
            # valid at the server until t0 + lifetime - 1 at least (exp in whole seconds)
            refresh_by = t1 + lifetime * 3 / 4
            window = 2.5 * SLOW
            assert t1 - t0 + window + 1 + SLOW < lifetime / 4, \
                "the token took %.1f s to replace" % (t1 - t0)
            in_margin = 0
            while time.monotonic() < refresh_by + window:
                now = time.monotonic()
                expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
                if now > refresh_by:
                    in_margin += 1
                time.sleep(0.3)
            assert in_margin >= 3, "only %d deliveries inside the refresh margin" % in_margin
            # refresh tried, and with a back-off (5 s), not once per delivery
            failed = az.token_requests("client_credentials", "failed")
            assert 1 <= failed <= 1 + window / 5 + 1 and failed < in_margin, \
                "%d failed token requests for %d deliveries: %s" % (failed, in_margin,
                                                                   az.stats())
            assert "event=oauth2_refresh_failed backend=inbox" in gw.log()
            time.sleep(max(0, t1 + lifetime + 1 - time.monotonic()))
            expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
            assert "event=backend_down" not in gw.log()
            no_secrets(gw, CLIENT_SECRET, *az.stats()["tokens"])
        assert dc.count("alice@" + DOMAIN) >= 2 + in_margin


def test_oauth2_jwt_bearer_subject_refused_does_not_open_the_breaker():
    # Google answers 400 invalid_grant for a JWT-bearer assertion whose sub is no (or a
    # suspended) mailbox: that concerns this recipient only. Five of them in a row with
    # breaker_failures = 3 must not take the backend down for everyone else.
    with servers() as (dc, az):
        be = backend(dc, az, "jwt_bearer", max_idle=0, breaker_failures=3,
                     breaker_cooloff="60s")
        with gateway(be) as gw:
            az.set(refuse_subjects=["bob@" + DOMAIN])
            for _ in range(5):
                expect(deliver(gw, "bob@" + DOMAIN), 451, "4.7.0")
            assert az.token_requests(JWT_BEARER, "failed") >= 5, az.stats()
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            assert "event=backend_down" not in gw.log()
            # a client-level refusal (invalid_client: the key revoked) concerns every
            # mailbox: that one does count
            az.set(mode="refuse")
            for _ in range(3):
                expect(deliver(gw, "carol@" + DOMAIN), 451, "4.7.0")
            c = gw.session()
            expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            expect(c.cmd("RCPT TO:<alice@%s>" % DOMAIN), 451, "4.4.1")
            c.close()
            assert "event=backend_down backend=inbox" in gw.log()
        assert dc.count("alice@" + DOMAIN) == 1
        assert dc.count("bob@" + DOMAIN) == 0


def test_oauth2_jwt_bearer_assertion_refused_for_everyone_opens_the_breaker():
    # invalid_grant about the assertion itself (Google: "Invalid JWT Signature." for a key
    # deleted in the console) is the same for every mailbox: that one counts.
    with servers() as (dc, az):
        with open(az.service_account_file) as f:
            key = json.load(f)
        key["private_key_id"] = "deleted-key"      # the server knows only k1
        path = secret_file(dc, "old-key.json", json.dumps(key))
        be = backend(dc, az, "jwt_bearer", max_idle=0, breaker_failures=3,
                     breaker_cooloff="60s", oauth2_key_file=path)
        with gateway(be) as gw:
            for user in ("alice", "bob", "carol"):
                expect(deliver(gw, user + "@" + DOMAIN), 451, "4.7.0")
            assert az.token_requests(JWT_BEARER, "failed") == 3, az.stats()
            c = gw.session()
            expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            expect(c.cmd("RCPT TO:<alice@%s>" % DOMAIN), 451, "4.4.1")
            c.close()
            assert "event=backend_down backend=inbox" in gw.log()


def test_oauth2_token_endpoint_refusing_is_451_not_a_bounce():
    with servers() as (dc, az):
        with gateway(backend(dc, az, "client_credentials")) as gw:
            az.set(mode="refuse")             # 400 invalid_client, as for a revoked secret
            expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
            assert az.token_requests("client_credentials", "failed") == 1
            az.set(mode="ok")
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")


def _concurrent(gw, n, rcpt):
    replies = [None] * n
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        replies[i] = deliver(gw, rcpt, subject="c%d" % i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return replies


def test_oauth2_32_concurrent_deliveries_share_one_token_request():
    with servers() as (dc, az):
        # 32 workers, each delivery alone (multiappend 1) on its own login (max_idle 0); the
        # token endpoint answers slowly, so every worker asks while the request is in flight
        be = backend(dc, az, "client_credentials", concurrency=32, multiappend=1, max_idle=0)
        with gateway(be, config={"max_connections_per_client": 100}) as gw:
            az.set(delay_ms=1000)
            for r in _concurrent(gw, 32, "alice@" + DOMAIN):
                expect(r, 250, "2.0.0")
            assert az.token_requests() == 1, "a stampede: %s" % az.stats()
            # all refused at once (revoked): one refresh for all of them
            az.revoke_all()
            for r in _concurrent(gw, 32, "alice@" + DOMAIN):
                expect(r, 250, "2.0.0")
            assert az.token_requests() == 2, "a stampede on refresh: %s" % az.stats()
            no_secrets(gw, CLIENT_SECRET, *az.stats()["tokens"])
        assert dc.count("alice@" + DOMAIN) == 64


# --- check --probe and route -------------------------------------------------------------------

def test_oauth2_probe_gets_a_token_and_logs_in_route_names_the_identity():
    with servers() as (dc, az):
        be = backend(dc, az, "jwt_bearer", login="alice@" + DOMAIN)
        gw = gateway(be)
        p = subprocess.run([binary(), "-c", gw.conf_path, "check", "--probe"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "OAuth2 token obtained, login ok as alice@example.test" in p.stdout + p.stderr, \
            p.stdout + p.stderr
        assert az.token_requests(JWT_BEARER, "ok") == 1
        p = subprocess.run([binary(), "-c", gw.conf_path, "route", "bob@" + DOMAIN],
                           capture_output=True, text=True, timeout=60)
        out = p.stdout + p.stderr
        assert "auth=xoauth2" in out and "sub=bob@example.test" in out and \
            "iss=%s" % SERVICE_ACCOUNT in out, out
        # a refusing endpoint fails the probe, saying so
        az.set(mode="refuse")
        p = subprocess.run([binary(), "-c", gw.conf_path, "check", "--probe"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "OAuth2 token request failed" in p.stdout + p.stderr, \
            p.stdout + p.stderr


# --- webhook bearer ----------------------------------------------------------------------------

def test_oauth2_webhook_bearer_checked_by_the_receiver():
    from webhook_receiver import Receiver
    with OAuth2Server() as az:
        ctx = ssl.create_default_context(cafile=az.ca_file)

        def check(req):
            # the receiver asks the authorization server whether the token is good (RFC 7662)
            auth = req.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                return {"status": 401}
            q = urllib.request.Request(az.introspect_app_url,
                                       data=urllib.parse.urlencode({"token": auth[7:]}).encode())
            ok = json.loads(urllib.request.urlopen(q, context=ctx, timeout=10).read())["active"]
            return {"status": 200 if ok else 401}

        d = os.path.join(az.dir, "conf")
        os.mkdir(d)
        secret = os.path.join(d, "client.secret")
        with open(secret, "w") as f:
            f.write(CLIENT_SECRET + "\n")
        os.chmod(secret, 0o600)
        with Receiver(rule=check) as r:
            s = {"driver": "webhook", "url": r.url, "allow_http": True,
                 "oauth2_grant": "client_credentials", "oauth2_token_url": az.token_url,
                 "oauth2_client_id": CLIENT_ID, "oauth2_client_secret_file": secret,
                 "oauth2_scope": "api://receiver/.default", "oauth2_ca_file": az.ca_file,
                 "oauth2_timeout": "30s"}
            be = "hook: { %s };" % " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s.items())
            with gateway(be, route_to="hook") as gw:
                expect(deliver(gw, "alice@" + DOMAIN), 250)
                expect(deliver(gw, "bob@" + DOMAIN), 250)
                assert az.token_requests("client_credentials", "ok") == 1, az.stats()
                assert all(q.headers.get("Authorization", "").startswith("Bearer ")
                           for q in r.requests)
            # a gateway with no token yet and the token endpoint down: 451 4.7.0, no request
            az.set(mode="down")
            before = len(r.requests)
            with gateway(be, route_to="hook") as gw:
                expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
                assert len(r.requests) == before
                no_secrets(gw, CLIENT_SECRET)


def _introspecting_rule(az, unknown_domain_ok=True):
    """A receiver rule that asks the authorization server whether the bearer token is good
    (RFC 7662) and answers 401 with RFC 6750's invalid_token when it is not."""
    ctx = ssl.create_default_context(cafile=az.ca_file)

    def check(req):
        auth = req.headers.get("Authorization", "")
        refused = {"status": 401, "headers": {
            "WWW-Authenticate": 'Bearer realm="hook", error="invalid_token"'}}
        if not auth.startswith("Bearer "):
            return refused
        q = urllib.request.Request(az.introspect_app_url,
                                   data=urllib.parse.urlencode({"token": auth[7:]}).encode())
        ok = json.loads(urllib.request.urlopen(q, context=ctx, timeout=10).read())["active"]
        return {"status": 200} if ok else refused
    return check


def _webhook_backend(az, r, **opts):
    d = os.path.join(az.dir, "conf")
    os.makedirs(d, exist_ok=True)
    secret = os.path.join(d, "client.secret")
    with open(secret, "w") as f:
        f.write(CLIENT_SECRET + "\n")
    os.chmod(secret, 0o600)
    s = {"driver": "webhook", "url": r.url, "allow_http": True,
         "oauth2_grant": "client_credentials", "oauth2_token_url": az.token_url,
         "oauth2_client_id": CLIENT_ID, "oauth2_client_secret_file": secret,
         "oauth2_scope": "api://receiver/.default", "oauth2_ca_file": az.ca_file,
         "oauth2_timeout": "30s"}
    s.update(opts)
    return "hook: { %s };" % " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s.items())


def _deliver_big(gw, rcpt, size):
    """One message of about size bytes (past spool_memory_max: streamed from the spool file)."""
    c = gw.session()
    try:
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        expect(c.cmd("RCPT TO:<%s>" % rcpt), 250)
        expect(c.cmd("DATA"), 354)
        line = b"x" * 76 + b"\r\n"
        c.send(message("big").replace(b"hello\r\n", line * (size // len(line))) + b".\r\n")
        r = c.reply()
        c.cmd("QUIT")
        return r
    finally:
        c.close()


def test_oauth2_webhook_401_refreshes_once_and_resends_the_same_request():
    from webhook_receiver import Receiver
    with OAuth2Server() as az, Receiver(rule=_introspecting_rule(az)) as r:
        # format raw with a small spool_memory_max: the body is streamed from the spool file,
        # and must be read again for the second request
        be = _webhook_backend(az, r, format="raw")
        with gateway(be, route_to="hook", config={"spool_memory_max": "64K"}) as gw:
            expect(deliver(gw, "alice@" + DOMAIN), 250)
            assert az.token_requests() == 1
            # the cached token is revoked: 401, one new token, the same request again
            az.revoke_all()
            before = len(r.requests)
            expect(_deliver_big(gw, "bob@" + DOMAIN, 300000), 250, "2.0.0")
            assert az.token_requests() == 2, az.stats()
            sent = r.requests[before:]
            assert [q.headers.get("webhook-id") for q in sent] == \
                [sent[0].headers["webhook-id"]] * 2, [q.headers for q in sent]
            assert sent[0].headers["Authorization"] != sent[1].headers["Authorization"]
            assert len(sent[1].body) > 300000 and sent[1].body == sent[0].body
            assert gw.grep(r"event=webhook_token_refused id=%s action=retry"
                           % sent[0].headers["webhook-id"]), gw.log()
            # every token refused from now on: one refresh, one resend, then 451 4.7.0
            az.revoke_all()
            az.set(revoke_new=True)
            before = len(r.requests)
            expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
            assert az.token_requests() == 3, "refreshed more than once: %s" % az.stats()
            assert len(r.requests) - before == 2
            no_secrets(gw, CLIENT_SECRET, *az.stats()["tokens"])


def test_oauth2_webhook_verify_401_refreshes_once():
    from webhook_receiver import Receiver
    with OAuth2Server() as az, Receiver(rule=_introspecting_rule(az)) as r:
        be = _webhook_backend(az, r, verify_url=r.base + "/verify", verify_on_error="defer",
                              verify_cache_ttl="0s")
        with gateway(be, route_to="hook") as gw:
            c = gw.session()
            expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            expect(c.cmd("RCPT TO:<alice@%s>" % DOMAIN), 250)
            az.revoke_all()
            # the verification's token is refused: a new one, the same verification again
            expect(c.cmd("RCPT TO:<bob@%s>" % DOMAIN), 250)
            assert az.token_requests() == 2, az.stats()
            v = r.paths("/verify")
            assert len(v) == 3 and v[1].headers["webhook-id"] == v[2].headers["webhook-id"]
            # refused again with the new token: no verdict, verify_on_error defers (451)
            az.revoke_all()
            az.set(revoke_new=True)
            reply = c.cmd("RCPT TO:<carol@%s>" % DOMAIN)
            expect(reply, 451)
            assert az.token_requests() == 3, az.stats()
            assert len(r.paths("/verify")) == 5
            c.close()


def test_oauth2_webhook_probe_obtains_a_token():
    from webhook_receiver import Receiver
    with OAuth2Server() as az, Receiver() as r:
        gw = gateway(_webhook_backend(az, r), route_to="hook")
        p = subprocess.run([binary(), "-c", gw.conf_path, "check", "--probe"],
                           capture_output=True, text=True, timeout=60)
        out = p.stdout + p.stderr
        assert p.returncode == 0 and "OAuth2 token obtained" in out, out
        assert az.token_requests("client_credentials", "ok") == 1, az.stats()
        for token in az.stats()["tokens"]:
            assert token not in out
        az.set(mode="refuse")
        p = subprocess.run([binary(), "-c", gw.conf_path, "check", "--probe"],
                           capture_output=True, text=True, timeout=60)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "OAuth2 token request failed" in out, out


# --- rotated refresh tokens --------------------------------------------------------------------

def test_oauth2_rotated_refresh_token_written_back_for_a_restart():
    with servers() as (dc, az):
        az.set(rotate_refresh=True)           # each refresh revokes the token it used
        d = os.path.join(dc.tmpdir, "rt")
        os.mkdir(d, 0o700)
        path = os.path.join(d, "refresh.token")
        with open(path, "w") as f:
            f.write(az.refresh_token + "\n")
        os.chmod(path, 0o600)
        be = backend(dc, az, "refresh_token", max_idle=0, oauth2_refresh_token_file=path)
        with gateway(be) as gw:
            expect(deliver(gw, REFRESH_USER), 250, "2.0.0")
            with open(path) as f:
                saved = f.read()
            issued = az.stats()["refresh_tokens"]
            assert saved.strip() == issued[-1] and saved.endswith("\n"), "not written back"
            assert os.stat(path).st_mode & 0o777 == 0o600
            assert os.listdir(d) == ["refresh.token"], os.listdir(d)   # no temporary left
            assert gw.grep(r"event=oauth2_refresh_token_saved file=%s" % re.escape(path))
            no_secrets(gw, az.refresh_token, *issued)
        # a restart reads the rotated token from the file; the first one is revoked
        with gateway(be) as gw:
            expect(deliver(gw, REFRESH_USER), 250, "2.0.0")
            assert az.token_requests("refresh_token", "failed") == 0, az.stats()
        assert dc.count(REFRESH_USER) == 2


def _make_unwritable(d):
    """Make directory d refuse new entries, root included (chattr +i); False if impossible."""
    if os.geteuid() != 0:
        os.chmod(d, 0o500)
        return True
    return subprocess.run(["chattr", "+i", d], capture_output=True).returncode == 0


def _make_writable(d):
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", d], capture_output=True)
    else:
        os.chmod(d, 0o700)


def test_oauth2_rotated_refresh_token_not_saved_warns_and_keeps_it_in_memory():
    with servers() as (dc, az):
        az.set(rotate_refresh=True)
        d = os.path.join(dc.tmpdir, "rt-ro")
        os.mkdir(d, 0o700)
        path = os.path.join(d, "refresh.token")
        with open(path, "w") as f:
            f.write(az.refresh_token + "\n")
        os.chmod(path, 0o600)
        if not _make_unwritable(d):
            raise Skip("cannot make a directory unwritable here (chattr +i)")
        try:
            be = backend(dc, az, "refresh_token", max_idle=0, oauth2_refresh_token_file=path)
            with gateway(be) as gw:
                expect(deliver(gw, REFRESH_USER), 250, "2.0.0")
                assert gw.grep(r"event=oauth2_refresh_token_not_saved file=%s .*"
                               r"action=keep_in_memory" % re.escape(path)), gw.log()
                with open(path) as f:
                    assert f.read().strip() == az.refresh_token
                # the access token is revoked: the next refresh uses the rotated token held
                # in memory (the file's is revoked) and the delivery goes through
                az.revoke_all()
                expect(deliver(gw, REFRESH_USER), 250, "2.0.0")
                assert az.token_requests("refresh_token", "ok") == 2, az.stats()
                no_secrets(gw, az.refresh_token, *az.stats()["refresh_tokens"])
        finally:
            _make_writable(d)


# --- Microsoft 365 certificate credentials -----------------------------------------------------

def test_oauth2_client_certificate_credentials():
    """client_credentials with a client assertion signed by the certificate's key (no secret):
    the authorization server checks its signature with the registered certificate (jose),
    its x5t thumbprint, iss/sub/aud/exp and that its jti is new."""
    with servers() as (dc, az):
        cert = {"oauth2_client_id": CERT_CLIENT_ID, "oauth2_client_secret_file": None,
                "oauth2_client_certificate_file": az.client_cert_file,
                "oauth2_client_key_file": az.client_key_file, "max_idle": 0}
        with gateway(backend(dc, az, "client_credentials", **cert), debug=True) as gw:
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            expect(deliver(gw, "bob@" + DOMAIN), 250, "2.0.0")
            assert az.token_requests("client_credentials", "ok") == 1, az.stats()
            assert az.stats()["assertions"] == 1
            # revoked: a new token with a new assertion (a replayed jti would be refused)
            az.revoke_all()
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            assert az.stats()["assertions"] == 2, az.stats()
            with open(az.client_key_file) as f:
                no_secrets(gw, f.read().splitlines()[1], *az.stats()["tokens"])
        assert dc.count("alice@" + DOMAIN) == 2
        # a certificate the application never registered: the token endpoint refuses,
        # 451 4.7.0 (never a bounce)
        other = dict(cert, oauth2_client_certificate_file=az.other_cert_file,
                     oauth2_client_key_file=az.other_key_file)
        with gateway(backend(dc, az, "client_credentials", **other)) as gw:
            expect(deliver(gw, "alice@" + DOMAIN), 451, "4.7.0")
            assert az.token_requests("client_credentials", "failed") == 1, az.stats()
        # a key that is not the certificate's, or a secret beside the certificate: refused
        # when the configuration is read
        for bad, why in ((dict(cert, oauth2_client_key_file=az.other_key_file),
                          "not the private key of"),
                         (dict(cert, oauth2_client_secret_file=secret_file(dc, "s", "x")),
                          "exclude each other")):
            gw = gateway(backend(dc, az, "client_credentials", **bad))
            p = subprocess.run([binary(), "-c", gw.conf_path, "check"], capture_output=True,
                               text=True, timeout=60)
            assert p.returncode != 0 and why in p.stdout + p.stderr, p.stdout + p.stderr
