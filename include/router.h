/*
 * router - recipient address -> the rule that delivers it (first match wins).
 *
 * A rule's pattern is one of:
 *   "user@example.test"       exact address (case-insensitive)
 *   "@example.test", "*@example.test"   every address in the domain (case-insensitive)
 *   "*@*.example.test", "info-?@x.test" wildcard: '*' any run, '?' one character (fnmatch,
 *                              case-insensitive); '[' is literal
 *   "/^tickets\+.*@x\.test$/" POSIX extended regular expression, case-insensitive
 *   "*"                        everything (a catch-all)
 * A rule matches an address when it matches the address as given, or the address with its
 * +detail removed (so "bob@x.test" also takes "bob+lists@x.test").
 * The router owns the patterns; targets are indexes into the configuration's backend list.
 *
 * Error contract: router_add() returns 0, or -1 with a reason in error_r (a buffer, since a
 * regcomp message is dynamic).
 */
#ifndef LMTPGW_ROUTER_H
#define LMTPGW_ROUTER_H

#include <stddef.h>

struct router;

struct route_rule {
	const char *pattern;        /* as configured */
	const unsigned *targets;    /* backend indexes, in configured order */
	size_t target_count;
	size_t index;               /* position in the routes list, 0-based */
};

struct router *router_new(void);
void router_free(struct router **router);

int router_add(struct router *router, const char *pattern, const unsigned *targets,
	       size_t target_count, char *error_r, size_t error_size);

/* address: the whole recipient ("local@domain", or "postmaster"); base: the same without
 * +detail, or NULL when there is none. NULL when no rule matches. */
const struct route_rule *router_match(const struct router *router, const char *address,
				      const char *base);

size_t router_rule_count(const struct router *router);

#endif
