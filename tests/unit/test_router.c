/*
 * test_router - every pattern kind, case-insensitivity, first match wins, the +detail base,
 * pattern errors, and the rule returned (index, pattern, targets).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "router.h"

static struct router *router_with(const char *const *patterns, size_t count)
{
	struct router *r = router_new();
	char error[256];

	cr_assert_not_null(r);
	for (size_t i = 0; i < count; i++) {
		struct route_target target = { (unsigned)i, true, -1 };

		cr_assert_eq(router_add(r, patterns[i], &target, 1, error, sizeof(error)), 0,
			     "add %s: %s", patterns[i], error);
	}
	cr_assert_eq(router_rule_count(r), count);
	return r;
}

/* The index of the matching rule, or -1. */
static long match_index(const struct router *r, const char *address, const char *base)
{
	const struct route_rule *rule = router_match(r, address, base);

	return rule == NULL ? -1 : (long)rule->index;
}

struct match_case {
	const char *pattern;
	const char *address;
	const char *base;
	int matches;
};

Test(router, pattern_kinds)
{
	static const struct match_case cases[] = {
		/* exact */
		{ "bob@example.test", "bob@example.test", NULL, 1 },
		{ "bob@example.test", "BOB@Example.TEST", NULL, 1 },
		{ "bob@example.test", "bob@example.tes", NULL, 0 },
		{ "bob@example.test", "xbob@example.test", NULL, 0 },
		{ "bob@example.test", "bob@example.test.evil", NULL, 0 },
		{ "postmaster", "postmaster", NULL, 1 },
		{ "postmaster", "PostMaster", NULL, 1 },
		{ "postmaster", "postmaster@example.test", NULL, 0 },
		/* domain */
		{ "@example.test", "anyone@example.test", NULL, 1 },
		{ "@example.test", "anyone@EXAMPLE.test", NULL, 1 },
		{ "@example.test", "anyone@sub.example.test", NULL, 0 },
		{ "@example.test", "anyone@example.test.evil", NULL, 0 },
		{ "@example.test", "example.test", NULL, 0 },
		{ "@example.test", "postmaster", NULL, 0 },
		{ "*@example.test", "a+b@example.test", NULL, 1 },
		{ "*@example.test", "@example.test", NULL, 1 },
		{ "*@example.test", "x@other.test", NULL, 0 },
		{ "*@example.test", "\"a@b\"@example.test", NULL, 1 },
		{ "@example.test", "\"x@example.test\"@evil.test", NULL, 0 },
		/* wildcard */
		{ "*@*.example.test", "a@mx.example.test", NULL, 1 },
		{ "*@*.example.test", "a@a.b.example.test", NULL, 1 },
		{ "*@*.example.test", "a@example.test", NULL, 0 },
		{ "@*.example.test", "a@Sub.Example.Test", NULL, 1 },
		{ "@*.example.test", "a@example.test", NULL, 0 },
		{ "info-?@x.test", "info-1@x.test", NULL, 1 },
		{ "info-?@x.test", "INFO-A@X.TEST", NULL, 1 },
		{ "info-?@x.test", "info-12@x.test", NULL, 0 },
		{ "info-?@x.test", "info-@x.test", NULL, 0 },
		{ "*-bounces@*", "list-bounces@any.test", NULL, 1 },
		{ "*-bounces@*", "list-bounces-x@any.test", NULL, 0 },
		{ "a*b*c@x.test", "abc@x.test", NULL, 1 },
		{ "a*b*c@x.test", "aXbYbZc@x.test", NULL, 1 },
		{ "a*b*c@x.test", "aXbYcZ@x.test", NULL, 0 },
		/* '[' is literal, and so is '\' */
		{ "[ab]*@x.test", "[ab]z@x.test", NULL, 1 },
		{ "[ab]*@x.test", "az@x.test", NULL, 0 },
		{ "a\\?@x.test", "a\\b@x.test", NULL, 1 },
		{ "a\\?@x.test", "a?@x.test", NULL, 0 },
		{ "a\\?@x.test", "ab@x.test", NULL, 0 },
		/* no FNM_PATHNAME: '*' crosses '/' and leading '.' */
		{ "*@x.test", "a/b@x.test", NULL, 1 },
		{ "*@x.test", ".a@x.test", NULL, 1 },
		/* regex */
		{ "/^tickets\\+.*@x\\.test$/", "tickets+123@x.test", NULL, 1 },
		{ "/^tickets\\+.*@x\\.test$/", "TICKETS+abc@X.TEST", NULL, 1 },
		{ "/^tickets\\+.*@x\\.test$/", "tickets@x.test", NULL, 0 },
		{ "/^tickets\\+.*@x\\.test$/", "tickets+1@x.test.evil", NULL, 0 },
		{ "/example/", "bob@example.test", NULL, 1 },
		{ "/^(a|b)[0-9]{2}@/", "b42@x.test", NULL, 1 },
		{ "/^(a|b)[0-9]{2}@/", "c42@x.test", NULL, 0 },
		{ "/a/b/", "xa/by@x.test", NULL, 1 },
		/* catch-all */
		{ "*", "anything@anywhere.test", NULL, 1 },
		{ "*", "postmaster", NULL, 1 },
		{ "*", "", NULL, 1 },
		/* base: the address without +detail */
		{ "bob@example.test", "bob+lists@example.test", "bob@example.test", 1 },
		{ "bob@example.test", "bob+lists@example.test", NULL, 0 },
		{ "bob+lists@example.test", "bob+lists@example.test", "bob@example.test", 1 },
		{ "bob+other@example.test", "bob+lists@example.test", "bob@example.test", 0 },
		{ "info-?@x.test", "info-1+a@x.test", "info-1@x.test", 1 },
		{ "/^bob@/", "bob+x@x.test", "bob@x.test", 1 },
		{ "/^bob@/", "bob+x@x.test", NULL, 0 },
		{ "alice@example.test", "bob+lists@example.test", "bob@example.test", 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct router *r = router_with(&cases[i].pattern, 1);
		const struct route_rule *rule = router_match(r, cases[i].address, cases[i].base);

		cr_assert_eq(rule != NULL, cases[i].matches, "pattern %s, address %s, base %s: %s",
			     cases[i].pattern, cases[i].address,
			     cases[i].base ? cases[i].base : "(null)",
			     cases[i].matches ? "no match" : "matched");
		if (rule != NULL) {
			cr_assert_str_eq(rule->pattern, cases[i].pattern);
			cr_assert_eq(rule->index, 0);
		}
		router_free(&r);
		cr_assert_null(r);
	}
}

Test(router, first_match_wins)
{
	static const char *const patterns[] = {
		"postmaster",                    /* 0 */
		"/^tickets\\+.*@x\\.test$/",     /* 1 */
		"bob@x.test",                    /* 2 */
		"@x.test",                       /* 3 */
		"bob@x.test",                    /* 4: shadowed by 2 */
		"*@*.x.test",                    /* 5 */
		"*",                             /* 6 */
		"@y.test",                       /* 7: shadowed by 6 */
	};
	static const struct {
		const char *address;
		const char *base;
		long index;
	} cases[] = {
		{ "postmaster", NULL, 0 },
		{ "tickets+1@x.test", "tickets@x.test", 1 },
		{ "bob@x.test", NULL, 2 },
		{ "BOB+news@X.test", "BOB@X.test", 2 },
		{ "carol@x.test", NULL, 3 },
		{ "carol@mx.x.test", NULL, 5 },
		{ "carol@y.test", NULL, 6 },
		{ "", NULL, 6 },
	};
	struct router *r = router_with(patterns, sizeof(patterns) / sizeof(patterns[0]));

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(match_index(r, cases[i].address, cases[i].base), cases[i].index,
			     "%s", cases[i].address);
	}
	router_free(&r);
}

Test(router, no_match)
{
	static const char *const patterns[] = { "bob@x.test", "@y.test", "/^z/", "q?@w.test" };
	struct router *r = router_with(patterns, 4);

	cr_assert_null(router_match(r, "alice@x.test", NULL));
	cr_assert_null(router_match(r, "alice+bob@x.test", "alice@x.test"));
	cr_assert_null(router_match(r, "y.test", NULL));
	cr_assert_null(router_match(r, "postmaster", NULL));
	cr_assert_null(router_match(r, "q12@w.test", NULL));
	router_free(&r);

	/* an empty router matches nothing */
	r = router_new();
	cr_assert_eq(router_rule_count(r), 0);
	cr_assert_null(router_match(r, "bob@x.test", "bob@x.test"));
	router_free(&r);
}

Test(router, rule_contents)
{
	struct router *r = router_new();
	char error[128];
	struct route_target targets_a[] = { { 3, true, -1 }, { 1, false, -1 }, { 2, true, 5 } };
	struct route_target targets_b[] = { { 7, true, -1 } };
	char pattern[] = "@x.test";

	cr_assert_eq(router_add(r, "bob@x.test", targets_a, 3, error, sizeof(error)), 0);
	cr_assert_eq(router_add(r, pattern, targets_b, 1, error, sizeof(error)), 0);
	/* the router owns copies: the caller's buffers may change or go away */
	targets_a[0].backend = 99;
	targets_a[1].required = true;
	targets_b[0].backend = 99;
	pattern[1] = 'Q';

	const struct route_rule *rule = router_match(r, "bob@x.test", NULL);
	cr_assert_not_null(rule);
	cr_assert_str_eq(rule->pattern, "bob@x.test");
	cr_assert_eq(rule->index, 0);
	cr_assert_eq(rule->target_count, 3);
	cr_assert_eq(rule->targets[0].backend, 3);
	cr_assert_eq(rule->targets[1].backend, 1);
	cr_assert_eq(rule->targets[2].backend, 2);
	/* roles and fallbacks are the caller's, copied as given */
	cr_assert(rule->targets[0].required && !rule->targets[1].required);
	cr_assert_eq(rule->targets[0].fallback, -1);
	cr_assert_eq(rule->targets[2].fallback, 5);

	rule = router_match(r, "al@x.test", NULL);
	cr_assert_not_null(rule);
	cr_assert_str_eq(rule->pattern, "@x.test");
	cr_assert_eq(rule->index, 1);
	cr_assert_eq(rule->target_count, 1);
	cr_assert_eq(rule->targets[0].backend, 7);

	/* a rule pointer stays valid while more rules are added */
	for (int i = 0; i < 40; i++)
		cr_assert_eq(router_add(r, "*", targets_b, 1, error, sizeof(error)), 0);
	cr_assert_eq(router_rule_count(r), 42);
	cr_assert_eq(rule, router_match(r, "al@x.test", NULL));
	cr_assert_eq(router_match(r, "z@z.test", NULL)->index, 2);
	router_free(&r);
}

Test(router, add_errors)
{
	static const struct {
		const char *pattern;
		const char *error;   /* a substring of the reason */
	} cases[] = {
		{ "", "empty route pattern" },
		{ "/", "without closing '/'" },
		{ "/^bob@x", "without closing '/'" },
		{ "//", "empty regular expression" },
		{ "/a(b/", "route pattern /a(b/: " },
		{ "/[z-a]/", "route pattern /[z-a]/: " },
		{ "/*/", "route pattern /*/: " },
		{ "bob", "no '@'" },
		{ "bob.example.test", "no '@'" },
		{ "postmasterx", "no '@'" },
		{ "bob@", "empty domain" },
		{ "@", "bad domain" },
		{ "*@", "bad domain" },
		{ "@a@b.test", "bad domain" },
	};
	struct route_target target = { 0, true, -1 };

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct router *r = router_new();
		char error[256] = "";

		cr_assert_eq(router_add(r, cases[i].pattern, &target, 1, error, sizeof(error)), -1,
			     "%s was accepted", cases[i].pattern);
		cr_assert(strstr(error, cases[i].error) != NULL, "%s: got \"%s\"", cases[i].pattern,
			  error);
		cr_assert_eq(router_rule_count(r), 0);
		router_free(&r);
	}

	/* regerror text is passed on, and a rejected rule takes no index */
	struct router *r = router_new();
	char error[256] = "";
	cr_assert_eq(router_add(r, "/a(b/", &target, 1, error, sizeof(error)), -1);
	cr_assert(strlen(error) > strlen("route pattern /a(b/: "), "%s", error);
	cr_assert_eq(router_add(r, "*", &target, 0, error, sizeof(error)), -1);
	cr_assert(strstr(error, "no targets") != NULL, "%s", error);
	cr_assert_eq(router_add(r, NULL, &target, 1, error, sizeof(error)), -1);
	cr_assert_eq(router_add(r, "*", &target, 1, NULL, 0), 0);
	cr_assert_eq(router_match(r, "a@b.test", NULL)->index, 0);
	/* a small error buffer is truncated, not overrun */
	char tiny[8];
	cr_assert_eq(router_add(r, "/a(b/", &target, 1, tiny, sizeof(tiny)), -1);
	cr_assert_eq(strlen(tiny), 7);
	router_free(&r);
}

/* A pattern of many stars against a long address must not take exponential time. */
Test(router, wildcard_no_blowup, .timeout = 5)
{
	char pattern[128], address[4096];
	struct router *r;
	char error[64];
	struct route_target target = { 0, true, -1 };

	memset(pattern, 0, sizeof(pattern));
	for (int i = 0; i < 30; i++)
		strcat(pattern, "*a");
	strcat(pattern, "*b");
	memset(address, 'a', sizeof(address) - 1);
	address[sizeof(address) - 1] = '\0';
	r = router_new();
	cr_assert_eq(router_add(r, pattern, &target, 1, error, sizeof(error)), 0, "%s", error);
	cr_assert_null(router_match(r, address, NULL));
	address[sizeof(address) - 2] = 'b';
	cr_assert_not_null(router_match(r, address, NULL));
	router_free(&r);
}

Test(router, free_null)
{
	struct router *r = NULL;

	router_free(&r);
	cr_assert_null(r);
}
