/*
 * recipient - one accepted recipient of a transaction, with its address split for routing and
 * templates, and the function that fills and routes it (at RCPT, and for `lmtpgw route`).
 */
#ifndef LMTPGW_RECIPIENT_H
#define LMTPGW_RECIPIENT_H

#include "address.h"
#include "envelope.h"

#include <stdbool.h>

struct route_rule;
struct router;

/* One accepted recipient of a transaction, with its address split for templates. */
struct recipient {
	struct address addr;
	struct rcpt_params params;
	char rcpt[ADDRESS_PATH_MAX + 1];     /* "local@domain" as routed (lowercased if configured) */
	char user[ADDRESS_LOCAL_MAX + 3];    /* local part as given, detail included */
	char local[ADDRESS_LOCAL_MAX + 3];   /* without +detail */
	char detail[ADDRESS_LOCAL_MAX + 3];  /* after the separator, "" when none */
	char domain[ADDRESS_DOMAIN_MAX + 1]; /* lowercased */
	const struct route_rule *rule;       /* the route that matched */
};

/* Fill a recipient's normalised forms from r->addr (quoted dot-strings unquoted, domain
 * lowercased, local part lowercased with lowercase_local_part, +detail split off at separator) and route it: sets and
 * returns r->rule, NULL when no route matches. Used at RCPT and by `lmtpgw route`. */
const struct route_rule *recipient_route(struct recipient *r, const struct router *router,
					 bool lowercase_local_part, const char *separator);

#endif
