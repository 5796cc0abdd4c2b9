/*
 * router - recipient address -> the rule that delivers it (first match wins).
 *
 * Each pattern is classified once at router_add() (exact, domain, wildcard, regex, catch-all)
 * and checked there, so a bad route is refused when the configuration loads. The router owns
 * a copy of every pattern, of every target array, and the compiled regular expressions;
 * router_free() releases all of them. Rules are kept as separate allocations, so a
 * struct route_rule pointer returned by router_match() stays valid until router_free().
 *
 * Matching is ASCII case-insensitive for every kind. Wildcards use our own matcher ('*' any
 * run of bytes, '?' one byte, everything else literal, '[' and '\' included): iterative, with
 * single-star backtracking, so a hostile address costs at most O(pattern * address).
 *
 * Error contract: router_add() returns 0, or -1 with a reason written to error_r; the router
 * is unchanged on failure. router_new() returns NULL only when out of memory.
 */
#include "router.h"

#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum rule_kind {
	RULE_EXACT,     /* whole address, case-insensitive */
	RULE_DOMAIN,    /* "@dom" or "*@dom": domain part equals dom */
	RULE_WILDCARD,  /* '*' and '?' over the whole address */
	RULE_REGEX,     /* "/ERE/" */
	RULE_ANY,       /* "*" */
};

struct rule {
	struct route_rule pub;   /* pub.pattern and pub.targets point at the copies below */
	enum rule_kind kind;
	char *pattern;
	const char *match;       /* EXACT: pattern; DOMAIN: the domain; WILDCARD: the glob */
	char *glob;              /* WILDCARD from "@*.dom": "*@*.dom" (owned), else NULL */
	struct route_target *targets;
	regex_t re;
};

struct router {
	struct rule **rules;
	size_t count;
	size_t alloc;
};

struct router *router_new(void)
{
	return calloc(1, sizeof(struct router));
}

static void rule_free(struct rule *rule)
{
	if (rule == NULL)
		return;
	if (rule->kind == RULE_REGEX)
		regfree(&rule->re);
	free(rule->pattern);
	free(rule->glob);
	free(rule->targets);
	free(rule);
}

void router_free(struct router **router)
{
	if (*router == NULL)
		return;
	for (size_t i = 0; i < (*router)->count; i++)
		rule_free((*router)->rules[i]);
	free((*router)->rules);
	free(*router);
	*router = NULL;
}

size_t router_rule_count(const struct router *router)
{
	return router->count;
}

static void set_error(char *error_r, size_t error_size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(char *error_r, size_t error_size, const char *fmt, ...)
{
	va_list ap;

	if (error_r == NULL || error_size == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(error_r, error_size, fmt, ap);
	va_end(ap);
}

/* ASCII only, whatever the locale: addresses are compared the same way everywhere. */
static int ascii_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int has_wildcard(const char *s)
{
	return strpbrk(s, "*?") != NULL;
}

/*
 * '*' matches any run of bytes (empty included), '?' exactly one byte, anything else itself,
 * ASCII case-insensitively. On a mismatch we resume from the last '*' one byte further in
 * the subject; earlier stars never need revisiting, since the last one can absorb anything.
 */
static int glob_match(const char *pat, const char *str)
{
	const char *star = NULL, *resume = NULL;

	while (*str != '\0') {
		if (*pat == '*') {
			star = pat++;
			resume = str;
		} else if (*pat != '\0' && (*pat == '?' ||
			   ascii_lower((unsigned char)*pat) == ascii_lower((unsigned char)*str))) {
			pat++;
			str++;
		} else if (star != NULL) {
			pat = star + 1;
			str = ++resume;
		} else {
			return 0;
		}
	}
	while (*pat == '*')
		pat++;
	return *pat == '\0';
}

static int rule_match_one(const struct rule *rule, const char *address)
{
	const char *at;

	switch (rule->kind) {
	case RULE_EXACT:
		return strcasecmp(rule->match, address) == 0;
	case RULE_DOMAIN:
		/* The last '@': a quoted local part may hold one of its own. */
		at = strrchr(address, '@');
		return at != NULL && strcasecmp(at + 1, rule->match) == 0;
	case RULE_WILDCARD:
		return glob_match(rule->match, address);
	case RULE_REGEX:
		return regexec(&rule->re, address, 0, NULL, 0) == 0;
	case RULE_ANY:
		return 1;
	}
	return 0;
}

/* Classify and check the pattern; fills kind/match/glob/re. */
static int rule_parse(struct rule *rule, char *error_r, size_t error_size)
{
	char *p = rule->pattern;
	size_t len = strlen(p);

	if (len == 0) {
		set_error(error_r, error_size, "empty route pattern");
		return -1;
	}
	if (strcmp(p, "*") == 0) {
		rule->kind = RULE_ANY;
		return 0;
	}
	if (p[0] == '/') {
		if (len < 2 || p[len - 1] != '/') {
			set_error(error_r, error_size,
				  "route pattern %.200s: regular expression without closing '/'", p);
			return -1;
		}
		if (len == 2) {
			set_error(error_r, error_size, "route pattern //: empty regular expression");
			return -1;
		}
		/* Compile the text between the slashes from a copy, leaving the pattern intact. */
		char *expr = strndup(p + 1, len - 2);
		int ret;

		if (expr == NULL) {
			set_error(error_r, error_size, "out of memory");
			return -1;
		}
		ret = regcomp(&rule->re, expr, REG_EXTENDED | REG_ICASE | REG_NOSUB);
		free(expr);
		if (ret != 0) {
			char msg[256];

			regerror(ret, &rule->re, msg, sizeof(msg));
			set_error(error_r, error_size, "route pattern %.200s: %s", p, msg);
			return -1;
		}
		rule->kind = RULE_REGEX;
		return 0;
	}

	const char *domain = NULL;

	if (p[0] == '@')
		domain = p + 1;
	else if (p[0] == '*' && p[1] == '@')
		domain = p + 2;
	if (domain != NULL) {
		if (*domain == '\0' || strchr(domain, '@') != NULL) {
			set_error(error_r, error_size, "route pattern %.200s: bad domain", p);
			return -1;
		}
		if (!has_wildcard(domain)) {
			rule->kind = RULE_DOMAIN;
			rule->match = domain;
			return 0;
		}
		if (p[0] == '@') {
			/* "@*.example.test": a wildcard domain; match it as "*@*.example.test". */
			if (asprintf(&rule->glob, "*%s", p) < 0) {
				rule->glob = NULL;
				set_error(error_r, error_size, "out of memory");
				return -1;
			}
			rule->kind = RULE_WILDCARD;
			rule->match = rule->glob;
			return 0;
		}
	}
	if (has_wildcard(p)) {
		rule->kind = RULE_WILDCARD;
		rule->match = p;
		return 0;
	}
	/* RFC 5321 4.5.1: "postmaster" without a domain is a valid recipient. */
	if (strchr(p, '@') == NULL && strcasecmp(p, "postmaster") != 0) {
		set_error(error_r, error_size,
			  "route pattern %.200s: not an address (no '@'), domain, wildcard or /regex/",
			  p);
		return -1;
	}
	if (p[len - 1] == '@') {
		set_error(error_r, error_size, "route pattern %.200s: empty domain", p);
		return -1;
	}
	rule->kind = RULE_EXACT;
	rule->match = p;
	return 0;
}

int router_add(struct router *router, const char *pattern, const struct route_target *targets,
	       size_t target_count, char *error_r, size_t error_size)
{
	struct rule *rule;

	if (pattern == NULL || *pattern == '\0') {
		set_error(error_r, error_size, "empty route pattern");
		return -1;
	}
	/* A matching rule with no target would leave the recipient without any reply. */
	if (target_count == 0 || targets == NULL) {
		set_error(error_r, error_size, "route pattern %.200s: no targets", pattern);
		return -1;
	}
	if (router->count == router->alloc) {
		size_t n = router->alloc == 0 ? 8 : router->alloc * 2;
		struct rule **r = realloc(router->rules, n * sizeof(*r));

		if (r == NULL) {
			set_error(error_r, error_size, "out of memory");
			return -1;
		}
		router->rules = r;
		router->alloc = n;
	}
	rule = calloc(1, sizeof(*rule));
	if (rule == NULL) {
		set_error(error_r, error_size, "out of memory");
		return -1;
	}
	rule->kind = RULE_ANY;   /* nothing to regfree until parsing says otherwise */
	rule->pattern = strdup(pattern);
	rule->targets = malloc(target_count * sizeof(*rule->targets));
	if (rule->pattern == NULL || rule->targets == NULL) {
		rule_free(rule);
		set_error(error_r, error_size, "out of memory");
		return -1;
	}
	if (rule_parse(rule, error_r, error_size) < 0) {
		rule_free(rule);   /* kind is RULE_REGEX only after regcomp succeeded */
		return -1;
	}
	memcpy(rule->targets, targets, target_count * sizeof(*rule->targets));
	rule->pub.pattern = rule->pattern;
	rule->pub.targets = rule->targets;
	rule->pub.target_count = target_count;
	rule->pub.index = router->count;
	router->rules[router->count++] = rule;
	return 0;
}

const struct route_rule *router_match(const struct router *router, const char *address,
				      const char *base)
{
	if (address == NULL)
		return NULL;
	for (size_t i = 0; i < router->count; i++) {
		const struct rule *rule = router->rules[i];

		if (rule_match_one(rule, address) || (base != NULL && rule_match_one(rule, base)))
			return &rule->pub;
	}
	return NULL;
}
