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

from harness import Lmtpgw, binary, conf_value, expect, free_port, require_dovecot

from dovecot import DovecotServer
from oauth2server import (CLIENT_ID, CLIENT_SECRET, JWT_BEARER, REFRESH_USER, SERVICE_ACCOUNT,
                          OAuth2Server)

DOMAIN = "example.test"
SENDER = "sender@remote.test"
USERS = {"alice@" + DOMAIN: "alice-pw", "bob@" + DOMAIN: "bob-pw"}
M365_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"


@contextlib.contextmanager
def servers(lifetime=3600):
    """(Dovecot with the oauth2 passdbs, the authorization server), both running."""
    require_dovecot()
    with OAuth2Server(lifetime=lifetime) as az:
        oauth2 = {"introspect_url": az.introspect_url,
                  "introspect_app_url": az.introspect_app_url, "ca_file": az.ca_file}
        with DovecotServer(users=USERS, quotas={}, oauth2=oauth2) as dc:
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
         "oauth2_grant": grant, "oauth2_ca_file": az.ca_file}
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
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v)) for k, v in s.items()))


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
        with gateway(backend(dc, az, "client_credentials")) as gw:
            expect(deliver(gw, "alice@" + DOMAIN), 250, "2.0.0")
            expect(deliver(gw, "bob@" + DOMAIN), 250, "2.0.0")
            # the app-only token serves every mailbox: one request
            assert az.token_requests("client_credentials", "ok") == 1, az.stats()
            assert dovecot_logins(dc, "bob@" + DOMAIN, "XOAUTH2"), dc.log()[-2000:]
            no_secrets(gw, CLIENT_SECRET)
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
