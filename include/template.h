/*
 * template - "%{name}" substitution for paths, keys, folders and URLs.
 *
 * Variables: %{local} (local part without +detail), %{detail} (after the separator, may be
 * empty), %{user} (local part as given, detail included), %{domain}, %{rcpt} (whole recipient
 * address), %{sender} (reverse path, empty for <>), %{date:FORMAT} (strftime(3) of the time the
 * message was received, UTC; FORMAT up to 64 characters, no '}'), %{sha256} (hex digest of the
 * content as received), %{msgid} (Message-ID without angle brackets, empty when absent),
 * %{session} (session id), %{txid} (transaction id). "%%" is a literal '%'. Anything else after
 * '%' is an error at compile time, so a configuration with a typo is refused at load.
 *
 * Error contract: template_compile() and template_expand() return 0, or -1 with a short static
 * reason in *error_r. template_expand() fails when the result would not fit in size.
 */
#ifndef LMTPGW_TEMPLATE_H
#define LMTPGW_TEMPLATE_H

#include <stddef.h>
#include <time.h>

struct template;

struct template_vars {
	const char *local;
	const char *detail;
	const char *user;
	const char *domain;
	const char *rcpt;
	const char *sender;
	const char *sha256;
	const char *msgid;
	const char *session;
	const char *txid;
	time_t received;
};

enum template_escape {
	TEMPLATE_RAW = 0,   /* values copied as they are */
	/* For one path component per value: '/' , NUL, control bytes, '%' and a leading '.' become
	 * %XX, so no value can climb out of its directory or hide a file. An empty value becomes
	 * "_" only when it would stand alone as a whole path component. */
	TEMPLATE_PATH = 1,
	/* For URLs and S3 keys: everything but unreserved characters (RFC 3986) and '/' in literal
	 * text is percent-encoded in values. */
	TEMPLATE_URL = 2,
};

int template_compile(const char *text, struct template **tmpl_r, const char **error_r);
void template_free(struct template **tmpl);

/* The text the template was compiled from. */
const char *template_source(const struct template *tmpl);

/* Expand into out (NUL-terminated). NULL values expand to "". */
int template_expand(const struct template *tmpl, const struct template_vars *vars,
		    enum template_escape escape, char *out, size_t size, const char **error_r);

/* True when the template uses the variable name (e.g. "sha256", "date"); lets callers know at
 * config time whether a value is needed before the message arrives. */
int template_uses(const struct template *tmpl, const char *name);

#endif
