/*
 * recipient - an accepted RCPT address in the forms routing and templates need, and the
 * routing of it (normalise, split +detail, match the router's rules).
 */
#include "recipient.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>

#include "format.h"
#include "router.h"

/* RFC 5321 4.1.2: "alice" and alice are the same mailbox. A quoted local part whose content
 * is a plain dot-string is unquoted, so it routes and files like the unquoted form; any other
 * quoted local part stays as it is (templates escape it for paths). */
static void unquote_local(const char *local, char *out, size_t size)
{
	static const char atext[] = "!#$%&'*+-/=?^_`{|}~";
	size_t n = 0;
	bool plain = local[0] == '"';

	if (plain) {
		for (const char *p = local + 1; *p && *p != '"' && n + 1 < size; p++) {
			if (*p == '\\' && p[1] != '\0')
				p++;
			unsigned char c = (unsigned char)*p;
			if (!(isalnum(c) || c >= 0x80 || c == '.' || strchr(atext, c) != NULL) ||
			    (c == '.' && (n == 0 || out[n - 1] == '.')))
				plain = false;
			out[n++] = *p;
		}
		if (n == 0 || out[n - 1] == '.')
			plain = false;
	}
	if (!plain) {
		format(out, size, "%s", local);
		return;
	}
	out[n] = '\0';
}

static void lowercase(char *p)
{
	for (; *p; p++)
		*p = (char)tolower((unsigned char)*p);
}

const struct route_rule *recipient_route(struct recipient *r, const struct router *router,
					 bool lowercase_local_part, const char *separator)
{
	char base[ADDRESS_PATH_MAX + 1];

	/* Split and normalise: the domain is case-insensitive, the local part by configuration. */
	unquote_local(r->addr.local, r->user, sizeof(r->user));
	format(r->domain, sizeof(r->domain), "%s", r->addr.domain);
	lowercase(r->domain);
	if (lowercase_local_part)
		lowercase(r->user);
	struct address norm = r->addr;
	format(norm.local, sizeof(norm.local), "%s", r->user);
	format(norm.domain, sizeof(norm.domain), "%s", r->domain);
	address_split_detail(&norm, separator, r->local, sizeof(r->local),
			     r->detail, sizeof(r->detail));
	if (r->domain[0] != '\0') {
		format(r->rcpt, sizeof(r->rcpt), "%s@%s", r->user, r->domain);
		format(base, sizeof(base), "%s@%s", r->local, r->domain);
	} else {
		format(r->rcpt, sizeof(r->rcpt), "%s", r->user);
		format(base, sizeof(base), "%s", r->local);
	}
	r->rule = router_match(router, r->rcpt, r->detail[0] ? base : NULL);
	return r->rule;
}
