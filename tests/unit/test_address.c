/* Unit tests for src/address.c: RFC 5321 paths, limits, address literals, UTF-8, formatting
 * and +detail splitting. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "address.h"

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

enum {
	NULL_OK = 1,    /* allow_null */
	PM_OK = 2,      /* allow_postmaster */
	UTF8_OK = 4,    /* allow_utf8 */
};

struct good_case {
	const char *in;
	int flags;
	const char *local;
	const char *domain;
	size_t end;       /* expected *pos afterwards */
	bool null;
	bool utf8;
};

static const struct good_case good_cases[] = {
	{ "<user@example.com>", 0, "user", "example.com", 18, false, false },
	{ "<a@b>", 0, "a", "b", 5, false, false },
	{ "<a@b> SIZE=10", 0, "a", "b", 5, false, false },
	{ "  <a@b>", 0, "a", "b", 7, false, false },
	{ "<first.last@sub.example.co.uk>", 0, "first.last", "sub.example.co.uk", 30, false, false },
	{ "<user+detail@example.com>", 0, "user+detail", "example.com", 25, false, false },
	{ "<!#$%&'*+-/=?^_`{|}~@x.y>", 0, "!#$%&'*+-/=?^_`{|}~", "x.y", 25, false, false },
	{ "<a@x-y.example>", 0, "a", "x-y.example", 15, false, false },
	{ "<a@1.2.3.example>", 0, "a", "1.2.3.example", 17, false, false },
	{ "<a@xn--bcher-kva.example>", 0, "a", "xn--bcher-kva.example", 25, false, false },
	{ "<a@EXAMPLE.COM>", 0, "a", "EXAMPLE.COM", 15, false, false },
	{ "<\"john doe\"@example.com>", 0, "\"john doe\"", "example.com", 24, false, false },
	{ "<\"a\\\"b\"@x>", 0, "\"a\\\"b\"", "x", 10, false, false },
	{ "<\"a\\\\b\"@x>", 0, "\"a\\\\b\"", "x", 10, false, false },
	{ "<\"a@b\"@x>", 0, "\"a@b\"", "x", 9, false, false },
	{ "<\"\"@x>", 0, "\"\"", "x", 6, false, false },
	{ "<\"a..b.\"@x>", 0, "\"a..b.\"", "x", 11, false, false },
	{ "<user@[127.0.0.1]>", 0, "user", "[127.0.0.1]", 18, false, false },
	{ "<user@[255.255.255.255]>", 0, "user", "[255.255.255.255]", 24, false, false },
	{ "<user@[IPv6:::1]>", 0, "user", "[IPv6:::1]", 17, false, false },
	{ "<user@[ipv6:2001:db8::1]>", 0, "user", "[ipv6:2001:db8::1]", 25, false, false },
	{ "<user@[IPv6:::ffff:192.0.2.1]>", 0, "user", "[IPv6:::ffff:192.0.2.1]", 30, false,
	  false },
	{ "<user@[x-tag:some-content]>", 0, "user", "[x-tag:some-content]", 27, false, false },
	{ "<user@[-tag:x]>", 0, "user", "[-tag:x]", 15, false, false }, /* Ldh-str may lead with '-' */
	{ "<@relay.example:user@example.com>", 0, "user", "example.com", 33, false, false },
	{ "<@a,@b.c:user@d>", 0, "user", "d", 16, false, false },
	{ "<>", NULL_OK, "", "", 2, true, false },
	{ "<> SIZE=1", NULL_OK, "", "", 2, true, false },
	{ "<postmaster>", PM_OK, "postmaster", "", 12, false, false },
	{ "<PostMaster>", PM_OK, "PostMaster", "", 12, false, false },
	{ "<Postmaster@example.com>", PM_OK, "Postmaster", "example.com", 24, false, false },
	{ "<j\xc3\xb6"
	  "e@ex\xc3\xa4mple.com>",
	  UTF8_OK, "j\xc3\xb6"
		   "e",
	  "ex\xc3\xa4mple.com", 19, false, true },
	{ "<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac\xe5\x8f\xb8>", UTF8_OK,
	  "\xe7\x94\xa8\xe6\x88\xb7", "\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac\xe5\x8f\xb8", 22, false,
	  true },
	{ "<\xf0\x9f\x98\x80@x>", UTF8_OK, "\xf0\x9f\x98\x80", "x", 8, false, true },
	{ "<\xf4\x8f\xbf\xbf@x>", UTF8_OK, "\xf4\x8f\xbf\xbf", "x", 8, false, true },
	{ "<\xed\x9f\xbf@x>", UTF8_OK, "\xed\x9f\xbf", "x", 7, false, true },
	{ "<\"\xc3\xa9 x\"@x>", UTF8_OK, "\"\xc3\xa9 x\"", "x", 10, false, true },
	{ "<plain@ascii>", UTF8_OK, "plain", "ascii", 13, false, false },
};

Test(address, good_paths)
{
	for (size_t i = 0; i < N_ELEMENTS(good_cases); i++) {
		const struct good_case *c = &good_cases[i];
		struct address addr;
		const char *error = NULL;
		size_t pos = 0;
		int ret = address_parse_path(c->in, &pos, &addr, (c->flags & NULL_OK) != 0,
					     (c->flags & PM_OK) != 0, (c->flags & UTF8_OK) != 0,
					     &error);

		cr_expect_eq(ret, 0, "case %zu \"%s\" failed: %s", i, c->in, error ? error : "");
		if (ret != 0)
			continue;
		cr_expect_str_eq(addr.local, c->local, "case %zu local", i);
		cr_expect_str_eq(addr.domain, c->domain, "case %zu domain", i);
		cr_expect_eq(pos, c->end, "case %zu pos %zu", i, pos);
		cr_expect_eq(addr.null, c->null, "case %zu null", i);
		cr_expect_eq(addr.utf8, c->utf8, "case %zu utf8", i);
	}
}

struct bad_case {
	const char *in;
	int flags;
	const char *error;
};

static const struct bad_case bad_cases[] = {
	{ "", 0, "missing '<'" },
	{ "user@example.com", 0, "missing '<'" },
	{ "\t<a@b>", 0, "missing '<'" },
	{ "<>", 0, "null address not allowed" },
	{ "<>", PM_OK, "null address not allowed" },
	{ "<a@b", 0, "missing '>'" },
	{ "<a@b c>", 0, "bad character in address" },
	{ "<user>", 0, "missing domain" },
	{ "<postmaster>", 0, "missing domain" },
	{ "<postmaster>", NULL_OK, "missing domain" },
	{ "<\"postmaster\">", PM_OK, "missing domain" },
	{ "<@a:postmaster>", PM_OK, "missing domain" },
	{ "<postmaster2>", PM_OK, "missing domain" },
	{ "<@example.com>", 0, "bad source route" },
	{ "<@a>", 0, "bad source route" },
	{ "<@a:>", 0, "empty local part" },
	{ "<@a,b:u@d>", 0, "bad source route" },
	{ "<@:u@d>", 0, "empty domain label" },
	{ "<@a u@d>", 0, "bad source route" },
	{ "<@-a:u@d>", 0, "domain label starts with a hyphen" },
	{ "<@a;u@d>", 0, "bad source route" },
	{ "<a b@c>", 0, "bad character in local part" },
	{ "<a(b)@c>", 0, "bad character in local part" },
	{ "<a,b@c>", 0, "bad character in local part" },
	{ "<@>", 0, "empty domain label" },
	{ "<.a@b>", 0, "empty atom in local part" },
	{ "<a.@b>", 0, "local part ends with a dot" },
	{ "<a..b@c>", 0, "empty atom in local part" },
	{ "<a@>", 0, "empty domain label" },
	{ "<a@.b>", 0, "empty domain label" },
	{ "<a@b.>", 0, "empty domain label" },
	{ "<a@b..c>", 0, "empty domain label" },
	{ "<a@-b.c>", 0, "domain label starts with a hyphen" },
	{ "<a@b-.c>", 0, "domain label ends with a hyphen" },
	{ "<a@b.c->", 0, "domain label ends with a hyphen" },
	{ "<a@b_c>", 0, "bad character in address" },
	{ "<a@b@c>", 0, "bad character in address" },
	{ "<a@@b>", 0, "empty domain label" },
	{ "<\"unterminated@x>", 0, "unterminated quoted local part" },
	{ "<\"a\rb\"@x>", 0, "bad character in quoted local part" },
	{ "<\"a\tb\"@x>", 0, "bad character in quoted local part" },
	{ "<\"a\\\tb\"@x>", 0, "bad quoted-pair in local part" },
	{ "<\"a\\", 0, "bad quoted-pair in local part" },
	{ "<\"a\"b@x>", 0, "bad character in local part" },
	{ "<a\"b\"@x>", 0, "bad character in local part" },
	{ "<a@[]>", 0, "empty address literal" },
	{ "<a@[1.2.3.4>", 0, "unterminated address literal" },
	{ "<a@[1.2.3.4", 0, "unterminated address literal" },
	{ "<a@[256.1.1.1]>", 0, "bad IPv4 address literal" },
	{ "<a@[1.2.3]>", 0, "bad IPv4 address literal" },
	{ "<a@[1.2.3.4.5]>", 0, "bad IPv4 address literal" },
	{ "<a@[01.2.3.4]>", 0, "bad IPv4 address literal" },
	{ "<a@[example.com]>", 0, "bad IPv4 address literal" },
	{ "<a@[IPv6:1.2.3.4]>", 0, "bad IPv6 address literal" },
	{ "<a@[IPv6:::1::2]>", 0, "bad IPv6 address literal" },
	{ "<a@[IPv6:12345::]>", 0, "bad IPv6 address literal" },
	{ "<a@[IPv6:]>", 0, "bad IPv6 address literal" },
	{ "<a@[ta g:x]>", 0, "bad character in address literal" },
	{ "<a@[tag-:x]>", 0, "bad address literal" },
	{ "<a@[tag:]>", 0, "bad address literal" },
	{ "<a@[:x]>", 0, "bad address literal" },
	{ "<a@[t_g:x]>", 0, "bad address literal" },
	{ "<a@[1.2.3.4 ]>", 0, "bad character in address literal" },
	{ "<a@[a[b:c]>", 0, "bad character in address literal" },
	{ "<a@[a\\b:c]>", 0, "bad character in address literal" },
	{ "<a@[1.2.3.4]x>", 0, "bad character in address" },
	/* UTF-8 without permission, and malformed UTF-8 with it */
	{ "<j\xc3\xb6"
	  "e@x>",
	  0, "non-ASCII character in address" },
	{ "<a@ex\xc3\xa4mple.com>", 0, "non-ASCII character in address" },
	{ "<\"\xc3\xa9\"@x>", 0, "non-ASCII character in address" },
	{ "<\xc0\xaf@x>", UTF8_OK, "malformed UTF-8 in address" },       /* overlong '/' */
	{ "<\xc1\xbf@x>", UTF8_OK, "malformed UTF-8 in address" },       /* overlong */
	{ "<\xe0\x80\xaf@x>", UTF8_OK, "malformed UTF-8 in address" },   /* overlong 3 */
	{ "<\xf0\x80\x80\xaf@x>", UTF8_OK, "malformed UTF-8 in address" }, /* overlong 4 */
	{ "<\xed\xa0\x80@x>", UTF8_OK, "malformed UTF-8 in address" },   /* U+D800 */
	{ "<\xed\xbf\xbf@x>", UTF8_OK, "malformed UTF-8 in address" },   /* U+DFFF */
	{ "<\xf4\x90\x80\x80@x>", UTF8_OK, "malformed UTF-8 in address" }, /* U+110000 */
	{ "<\xf5\x80\x80\x80@x>", UTF8_OK, "malformed UTF-8 in address" },
	{ "<\xff@x>", UTF8_OK, "malformed UTF-8 in address" },
	{ "<\x80@x>", UTF8_OK, "malformed UTF-8 in address" },           /* stray tail */
	{ "<\xc3@x>", UTF8_OK, "malformed UTF-8 in address" },           /* truncated */
	{ "<\xe4\xbe@x>", UTF8_OK, "malformed UTF-8 in address" },       /* truncated */
	{ "<\xc3", UTF8_OK, "malformed UTF-8 in address" },              /* at end of input */
	{ "<a@\xc3\x28>", UTF8_OK, "malformed UTF-8 in address" },
	{ "<\"\xed\xa0\x80\"@x>", UTF8_OK, "malformed UTF-8 in address" },
	{ "<\"\\\xc3\xa9\"@x>", UTF8_OK, "bad quoted-pair in local part" },
};

Test(address, bad_paths)
{
	for (size_t i = 0; i < N_ELEMENTS(bad_cases); i++) {
		const struct bad_case *c = &bad_cases[i];
		struct address addr;
		const char *error = NULL;
		size_t pos = 0;
		int ret;

		ret = address_parse_path(c->in, &pos, &addr, (c->flags & NULL_OK) != 0,
					 (c->flags & PM_OK) != 0, (c->flags & UTF8_OK) != 0, &error);
		cr_expect_eq(ret, -1, "case %zu \"%s\" should fail", i, c->in);
		cr_expect_eq(pos, 0, "case %zu moved pos on failure", i);
		if (ret == -1) {
			cr_expect_not_null(error, "case %zu without a reason", i);
			if (error != NULL)
				cr_expect_str_eq(error, c->error, "case %zu \"%s\"", i, c->in);
		}
	}
}

/* Fill buf with a domain of exactly len octets: labels of 60 'a' separated by dots. */
static void make_domain(char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (i % 61 == 60 && i + 1 < len) ? '.' : 'a';
	buf[len] = '\0';
}

static int parse_simple(const char *in, struct address *addr, const char **error)
{
	size_t pos = 0;

	*error = NULL;
	return address_parse_path(in, &pos, addr, false, false, false, error);
}

Test(address, local_part_limits)
{
	char local[80], path[200];
	struct address addr;
	const char *error;

	memset(local, 'l', 64);
	local[64] = '\0';
	snprintf(path, sizeof(path), "<%s@example.com>", local);
	cr_assert_eq(parse_simple(path, &addr, &error), 0, "64: %s", error);
	cr_assert_eq(strlen(addr.local), 64);

	memset(local, 'l', 65);
	local[65] = '\0';
	snprintf(path, sizeof(path), "<%s@example.com>", local);
	cr_assert_eq(parse_simple(path, &addr, &error), -1);
	cr_assert_str_eq(error, "local part too long");

	/* a quoted local part: 64 octets inside the quotes */
	memset(local, 'q', 64);
	local[64] = '\0';
	snprintf(path, sizeof(path), "<\"%s\"@example.com>", local);
	cr_assert_eq(parse_simple(path, &addr, &error), 0, "quoted 64: %s", error);
	cr_assert_eq(strlen(addr.local), 66);
	cr_assert_eq(addr.local[0], '"');
	cr_assert_eq(addr.local[65], '"');

	memset(local, 'q', 65);
	local[65] = '\0';
	snprintf(path, sizeof(path), "<\"%s\"@example.com>", local);
	cr_assert_eq(parse_simple(path, &addr, &error), -1);
	cr_assert_str_eq(error, "local part too long");

	/* 64 octets of UTF-8: 32 two-octet characters; one more octet is too many */
	for (int i = 0; i < 32; i++)
		memcpy(local + 2 * i, "\xc3\xa9", 2);
	local[64] = '\0';
	snprintf(path, sizeof(path), "<%s@x>", local);
	{
		size_t pos = 0;

		cr_assert_eq(address_parse_path(path, &pos, &addr, false, false, true, &error), 0);
		cr_assert_eq(strlen(addr.local), 64);
		snprintf(path, sizeof(path), "<a%s@x>", local);
		pos = 0;
		cr_assert_eq(address_parse_path(path, &pos, &addr, false, false, true, &error), -1);
		cr_assert_str_eq(error, "local part too long");
	}
}

Test(address, domain_and_path_limits)
{
	char domain[300], path[400];
	struct address addr;
	const char *error;

	/* A 255-octet domain is within the domain limit, but no path holding it fits in 256. */
	make_domain(domain, 255);
	snprintf(path, sizeof(path), "<a@%s>", domain);
	cr_assert_eq(parse_simple(path, &addr, &error), -1);
	cr_assert_str_eq(error, "address too long");

	make_domain(domain, 256);
	snprintf(path, sizeof(path), "<a@%s>", domain);
	cr_assert_eq(parse_simple(path, &addr, &error), -1);
	cr_assert_str_eq(error, "domain too long");

	/* "<a@" + 252 + ">" = 256 octets: the longest path */
	make_domain(domain, 252);
	snprintf(path, sizeof(path), "<a@%s>", domain);
	cr_assert_eq(strlen(path), 256);
	cr_assert_eq(parse_simple(path, &addr, &error), 0, "256-octet path: %s", error);
	cr_assert_eq(strlen(addr.domain), 252);

	make_domain(domain, 253);
	snprintf(path, sizeof(path), "<a@%s>", domain);
	cr_assert_eq(parse_simple(path, &addr, &error), -1);
	cr_assert_str_eq(error, "address too long");

	/* 64-octet local part and a 189-octet domain: 256 exactly */
	{
		char local[65];

		memset(local, 'l', 64);
		local[64] = '\0';
		make_domain(domain, 189);
		snprintf(path, sizeof(path), "<%s@%s>", local, domain);
		cr_assert_eq(strlen(path), 256);
		cr_assert_eq(parse_simple(path, &addr, &error), 0, "%s", error);
		make_domain(domain, 190);
		snprintf(path, sizeof(path), "<%s@%s>", local, domain);
		cr_assert_eq(parse_simple(path, &addr, &error), -1);
		cr_assert_str_eq(error, "address too long");
	}
}

Test(address, label_limits)
{
	char label[80], path[200];
	struct address addr;
	const char *error;

	memset(label, 'd', 63);
	label[63] = '\0';
	snprintf(path, sizeof(path), "<a@%s.example>", label);
	cr_assert_eq(parse_simple(path, &addr, &error), 0, "63: %s", error);

	memset(label, 'd', 64);
	label[64] = '\0';
	snprintf(path, sizeof(path), "<a@%s.example>", label);
	cr_assert_eq(parse_simple(path, &addr, &error), -1);
	cr_assert_str_eq(error, "domain label too long");

	snprintf(path, sizeof(path), "<a@example.%s>", label);
	cr_assert_eq(parse_simple(path, &addr, &error), -1);
	cr_assert_str_eq(error, "domain label too long");
}

Test(address, literal_limits)
{
	char inner[300], path[400];
	struct address addr;
	const char *error;

	/* "[x:" + content + "]" of 255 octets fits the domain limit */
	memset(inner, 'c', sizeof(inner));
	memcpy(inner, "x:", 2);
	inner[253] = '\0';
	snprintf(path, sizeof(path), "[%s]", inner);
	cr_assert_eq(strlen(path), 255);
	{
		struct address dummy;
		size_t pos = 0;
		char full[400];

		/* inside a path it is over 256 octets, so only the path limit can refuse it */
		snprintf(full, sizeof(full), "<a@%s>", path);
		cr_assert_eq(address_parse_path(full, &pos, &dummy, false, false, false, &error), -1);
		cr_assert_str_eq(error, "address too long");
	}
	inner[253] = 'c';
	inner[254] = '\0';
	snprintf(path, sizeof(path), "<a@[%s]>", inner);
	cr_assert_eq(parse_simple(path, &addr, &error), -1);
	cr_assert_str_eq(error, "address literal too long");
}

Test(address, pos_starts_where_told)
{
	const char *line = "TO:<a@b> NOTIFY=NEVER";
	struct address addr;
	const char *error;
	size_t pos = 3;

	cr_assert_eq(address_parse_path(line, &pos, &addr, false, false, false, &error), 0);
	cr_assert_eq(pos, 8);
	cr_assert_str_eq(line + pos, " NOTIFY=NEVER");
}

Test(address, format)
{
	struct address addr;
	const char *error;
	char buf[300];
	size_t pos = 0;

	cr_assert_eq(address_parse_path("<User@Example.COM>", &pos, &addr, false, false, false,
					&error), 0);
	cr_assert_eq(address_format(&addr, buf, sizeof(buf)), 16);
	cr_assert_str_eq(buf, "User@Example.COM");
	/* snprintf contract: truncated, terminated, full length returned */
	cr_assert_eq(address_format(&addr, buf, 5), 16);
	cr_assert_str_eq(buf, "User");

	pos = 0;
	cr_assert_eq(address_parse_path("<>", &pos, &addr, true, false, false, &error), 0);
	cr_assert_eq(address_format(&addr, buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "");

	pos = 0;
	cr_assert_eq(address_parse_path("<postmaster>", &pos, &addr, false, true, false, &error), 0);
	cr_assert_eq(address_format(&addr, buf, sizeof(buf)), 10);
	cr_assert_str_eq(buf, "postmaster");

	pos = 0;
	cr_assert_eq(address_parse_path("<\"a b\"@[127.0.0.1]>", &pos, &addr, false, false, false,
					&error), 0);
	address_format(&addr, buf, sizeof(buf));
	cr_assert_str_eq(buf, "\"a b\"@[127.0.0.1]");
}

Test(address, split_detail_table)
{
	static const struct {
		const char *path;
		const char *separators;
		const char *base;
		const char *detail;
	} cases[] = {
		{ "<user+folder@x>", "+", "user", "folder" },
		{ "<user+a+b@x>", "+", "user", "a+b" },
		{ "<user-folder@x>", "+-", "user", "folder" },
		{ "<user-a+b@x>", "+-", "user", "a+b" },
		{ "<user+a-b@x>", "+-", "user", "a-b" },
		{ "<user@x>", "+", "user", "" },
		{ "<user+@x>", "+", "user", "" },
		{ "<+foo@x>", "+", "+foo", "" },
		{ "<+@x>", "+", "+", "" },
		{ "<user+folder@x>", "", "user+folder", "" },
		{ "<user+folder@x>", NULL, "user+folder", "" },
		{ "<user+folder@x>", "-", "user+folder", "" },
		{ "<\"user+folder\"@x>", "+", "\"user+folder\"", "" },
		{ "<postmaster>", "+", "postmaster", "" },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		struct address addr;
		const char *error;
		char base[ADDRESS_LOCAL_MAX + 3], detail[ADDRESS_LOCAL_MAX + 3];
		size_t pos = 0;

		cr_assert_eq(address_parse_path(cases[i].path, &pos, &addr, false, true, false,
						&error), 0, "case %zu", i);
		memset(base, 'Z', sizeof(base));
		memset(detail, 'Z', sizeof(detail));
		address_split_detail(&addr, cases[i].separators, base, sizeof(base), detail,
				     sizeof(detail));
		cr_expect_str_eq(base, cases[i].base, "case %zu base", i);
		cr_expect_str_eq(detail, cases[i].detail, "case %zu detail", i);
	}
}

Test(address, split_detail_truncates)
{
	struct address addr;
	const char *error;
	char base[4], detail[3];
	size_t pos = 0;

	cr_assert_eq(address_parse_path("<username+folder@x>", &pos, &addr, false, false, false,
					&error), 0);
	address_split_detail(&addr, "+", base, sizeof(base), detail, sizeof(detail));
	cr_assert_str_eq(base, "use");
	cr_assert_str_eq(detail, "fo");
}

/* Every prefix of a valid path must fail cleanly (no read past the end, no success). */
Test(address, every_prefix_fails)
{
	static const char *const paths[] = {
		"<@a,@b:\"q\\\"x\"@[IPv6:2001:db8::1]>",
		"<user.name+tag@sub.example.com>",
		"<\xc3\xa9t\xc3\xa9@\xc3\xa9.example>",
	};

	for (size_t p = 0; p < N_ELEMENTS(paths); p++) {
		size_t len = strlen(paths[p]);

		for (size_t n = 0; n < len; n++) {
			char buf[128];
			struct address addr;
			const char *error = NULL;
			size_t pos = 0;

			memcpy(buf, paths[p], n);
			buf[n] = '\0';
			cr_expect_eq(address_parse_path(buf, &pos, &addr, false, false, true, &error),
				     -1, "prefix %zu of path %zu parsed", n, p);
			cr_expect_not_null(error);
		}
		{
			struct address addr;
			const char *error = NULL;
			size_t pos = 0;

			cr_expect_eq(address_parse_path(paths[p], &pos, &addr, false, false, true,
							&error), 0, "path %zu: %s", p, error);
			cr_expect_eq(pos, len);
		}
	}
}
