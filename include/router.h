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
 * The router owns the patterns and a copy of each rule's targets: a backend index (into the
 * configuration's backend list), the target's role and its fallback backend.
 *
 * Error contract: router_add() returns 0, or -1 with a reason in error_r (a buffer, since a
 * regcomp message is dynamic).
 */
#ifndef LMTPGW_ROUTER_H
#define LMTPGW_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

struct router;

/* One target of a route. A required target's result decides the recipient's reply; a
 * best-effort one's failure is logged and counted, never replied. A target with a fallback
 * that fails (any non-2xx result, or its circuit breaker open when the message is dispatched)
 * has the message delivered to the fallback backend instead, and the fallback's result stands
 * for the target. */
struct route_target {
	unsigned backend;           /* index into the configuration's backend list */
	bool required;
	int fallback;               /* backend index, -1: none */
};

struct route_rule {
	const char *pattern;        /* as configured */
	const struct route_target *targets; /* in configured order */
	size_t target_count;
	size_t index;               /* position in the routes list, 0-based */
};

struct router *router_new(void);
void router_free(struct router **router);

int router_add(struct router *router, const char *pattern, const struct route_target *targets,
	       size_t target_count, char *error_r, size_t error_size);

/* address: the whole recipient ("local@domain", or "postmaster"); base: the same without
 * +detail, or NULL when there is none. NULL when no rule matches. */
const struct route_rule *router_match(const struct router *router, const char *address,
				      const char *base);

size_t router_rule_count(const struct router *router);

#endif
