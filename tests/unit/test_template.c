/*
 * test_template - template compile errors, every variable, dates, and the three escape modes,
 * checked against exact expected output.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "template.h"

/* 2024-03-05 07:08:09 UTC, a Tuesday. */
#define T_RECEIVED ((time_t)1709622489)

static const struct template_vars vars_default = {
	.local = "bob",
	.detail = "lists",
	.user = "bob+lists",
	.domain = "example.test",
	.rcpt = "bob+lists@example.test",
	.sender = "alice@sender.test",
	.sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	.msgid = "abc.123@mx.test",
	.session = "S1a2b",
	.txid = "T42",
	.received = T_RECEIVED,
};

static void expand_ok(const char *text, const struct template_vars *vars,
		      enum template_escape escape, const char *expected)
{
	struct template *t = NULL;
	const char *error = NULL;
	char out[512];

	cr_assert_eq(template_compile(text, &t, &error), 0, "compile %s: %s", text,
		     error ? error : "");
	cr_assert_str_eq(template_source(t), text);
	memset(out, 'Z', sizeof(out));
	int ret = template_expand(t, vars, escape, out, sizeof(out), &error);
	cr_assert_eq(ret, 0, "expand %s (mode %d): %s", text, escape, error ? error : "");
	cr_assert_str_eq(out, expected, "template %s mode %d: got \"%s\", want \"%s\"", text,
			 escape, out, expected);
	template_free(&t);
	cr_assert_null(t);
}

struct expand_case {
	const char *text;
	enum template_escape escape;
	const char *expected;
};

Test(template, every_variable_raw)
{
	static const struct expand_case cases[] = {
		{ "%{local}", TEMPLATE_RAW, "bob" },
		{ "%{detail}", TEMPLATE_RAW, "lists" },
		{ "%{user}", TEMPLATE_RAW, "bob+lists" },
		{ "%{domain}", TEMPLATE_RAW, "example.test" },
		{ "%{rcpt}", TEMPLATE_RAW, "bob+lists@example.test" },
		{ "%{sender}", TEMPLATE_RAW, "alice@sender.test" },
		{ "%{sha256}", TEMPLATE_RAW,
		  "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" },
		{ "%{msgid}", TEMPLATE_RAW, "abc.123@mx.test" },
		{ "%{session}", TEMPLATE_RAW, "S1a2b" },
		{ "%{txid}", TEMPLATE_RAW, "T42" },
		{ "", TEMPLATE_RAW, "" },
		{ "plain text", TEMPLATE_RAW, "plain text" },
		{ "100%% sure", TEMPLATE_RAW, "100% sure" },
		{ "%%{local}", TEMPLATE_RAW, "%{local}" },
		{ "%%%%", TEMPLATE_RAW, "%%" },
		{ "a}b{c", TEMPLATE_RAW, "a}b{c" },
		{ "var/mail/%{domain}/%{local}", TEMPLATE_RAW, "var/mail/example.test/bob" },
		{ "%{local}%{detail}%{local}", TEMPLATE_RAW, "boblistsbob" },
		{ "<%{session}:%{txid}>", TEMPLATE_RAW, "<S1a2b:T42>" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expand_ok(cases[i].text, &vars_default, cases[i].escape, cases[i].expected);
}

Test(template, null_values_expand_empty)
{
	struct template_vars v = { .received = T_RECEIVED };

	expand_ok("[%{local}|%{detail}|%{user}|%{domain}|%{rcpt}|%{sender}|%{sha256}|%{msgid}|"
		  "%{session}|%{txid}]", &v, TEMPLATE_RAW, "[|||||||||]");
	expand_ok("x%{sender}y", &v, TEMPLATE_URL, "xy");
}

Test(template, dates)
{
	static const struct expand_case cases[] = {
		{ "%{date:%Y/%m/%d}", TEMPLATE_RAW, "2024/03/05" },
		{ "%{date:%H:%M:%S}", TEMPLATE_RAW, "07:08:09" },
		{ "%{date:%s}", TEMPLATE_RAW, "1709622489" },
		{ "%{date:%a %b %e}", TEMPLATE_RAW, "Tue Mar  5" },
		{ "%{date:%F}T%{date:%T}Z", TEMPLATE_RAW, "2024-03-05T07:08:09Z" },
		{ "%{date:%%}", TEMPLATE_RAW, "%" },
		{ "%{date:x}", TEMPLATE_RAW, "x" },
		/* Date output comes from config and our clock: copied as is in every mode. */
		{ "%{date:%Y/%m/%d}/%{sha256}.eml", TEMPLATE_URL,
		  "2024/03/05/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.eml" },
		{ "arch/%{date:%Y/%m}/%{local}", TEMPLATE_PATH, "arch/2024/03/bob" },
		{ "%{date:%Y}{x}", TEMPLATE_RAW, "2024{x}" },
		/* 64 characters exactly. */
		{ "%{date:%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y}",
		  TEMPLATE_RAW,
		  "2024202420242024202420242024202420242024202420242024202420242024"
		  "2024202420242024202420242024202420242024202420242024202420242024" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expand_ok(cases[i].text, &vars_default, cases[i].escape, cases[i].expected);

	/* Always UTC: the local time zone must not matter. */
	struct template_vars v = vars_default;
	v.received = 0;
	expand_ok("%{date:%F %T}", &v, TEMPLATE_RAW, "1970-01-01 00:00:00");
}

Test(template, compile_errors)
{
	static const struct {
		const char *text;
		const char *error;
	} cases[] = {
		{ "%{lcoal}", "unknown variable" },
		{ "%{Local}", "unknown variable" },
		{ "%{}", "unknown variable" },
		{ "%{ local}", "unknown variable" },
		{ "%{date}", "unknown variable" },
		{ "%{dates:%Y}", "unknown variable" },
		{ "%{local", "unterminated '%{'" },
		{ "a/%{date:%Y", "unterminated '%{'" },
		{ "%{", "unterminated '%{'" },
		{ "%local", "'%' must be followed by '{' or '%'" },
		{ "50%", "'%' must be followed by '{' or '%'" },
		{ "%(local)", "'%' must be followed by '{' or '%'" },
		{ "%{date:}", "empty date format" },
		{ "%{date:%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y%Y-}",
		  "date format longer than 64 characters" },
		{ "%{date:%2000Y}", "date format expands too long" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct template *t = (struct template *)&t;   /* must be reset to NULL */
		const char *error = NULL;

		cr_assert_eq(template_compile(cases[i].text, &t, &error), -1, "%s compiled",
			     cases[i].text);
		cr_assert_null(t);
		cr_assert_str_eq(error, cases[i].error, "%s: got \"%s\"", cases[i].text, error);
	}
}

/* '}' ends a date format: a second '}' is literal text after it, never part of the format. */
Test(template, brace_ends_date_format)
{
	expand_ok("%{date:%Y}}", &vars_default, TEMPLATE_RAW, "2024}");
}

Test(template, path_escaping)
{
	static const struct {
		const char *text;
		const char *local;
		const char *detail;
		const char *expected;
	} cases[] = {
		{ "mail/%{local}/%{detail}", "bob", "lists", "mail/bob/lists" },
		/* climbing out */
		{ "mail/%{local}/cur", "..", NULL, "mail/%2E./cur" },
		{ "mail/%{local}/cur", "../x", NULL, "mail/%2E.%2Fx/cur" },
		{ "mail/%{local}/cur", "../../etc/passwd", NULL,
		  "mail/%2E.%2F..%2Fetc%2Fpasswd/cur" },
		{ "%{local}", "..", NULL, "%2E." },
		{ "%{local}", ".", NULL, "%2E" },
		/* a '/' inside a value never makes a directory */
		{ "mail/%{local}", "a/b", NULL, "mail/a%2Fb" },
		{ "mail/%{local}", "/abs", NULL, "mail/%2Fabs" },
		/* hidden files */
		{ "mail/%{local}", ".hidden", NULL, "mail/%2Ehidden" },
		/* a '.' that is not first in its component is harmless */
		{ "mail/%{local}", "a.b.", NULL, "mail/a.b." },
		{ "mail/x%{local}", ".b", NULL, "mail/x.b" },
		/* the component start is judged on the output, across values */
		{ "mail/%{local}%{detail}", "", "..", "mail/%2E." },
		{ "mail/%{local}%{detail}", "x", "..", "mail/x.." },
		/* a literal '.' (Maildir++ folder) followed by a value of dots */
		{ "Maildir/.%{detail}/", NULL, ".", "Maildir/.%2E/" },
		{ "Maildir/.%{detail}/", NULL, "Sent", "Maildir/.Sent/" },
		/* '%' and control bytes */
		{ "mail/%{local}", "100%", NULL, "mail/100%25" },
		{ "mail/%{local}", "a\r\nb\tc\x7f", NULL, "mail/a%0D%0Ab%09c%7F" },
		{ "mail/%{local}", "\x1f", NULL, "mail/%1F" },
		/* 8-bit bytes (UTF-8 folder names) pass */
		{ "mail/%{local}", "j\xc3\xa9r\xc3\xb4me", NULL, "mail/j\xc3\xa9r\xc3\xb4me" },
		/* empty values standing alone as a component become "_" */
		{ "mail/%{detail}/new", "bob", "", "mail/_/new" },
		{ "mail/%{detail}/new", "bob", NULL, "mail/_/new" },
		{ "%{detail}/new", "bob", "", "_/new" },
		{ "mail/%{detail}", "bob", "", "mail/_" },
		{ "mail/%{local}%{detail}/new", "", "", "mail/_/new" },
		{ "mail/%{local}/%{detail}", "bob", "", "mail/bob/_" },
		/* ...but not when something shares the component */
		{ "mail/%{detail}x/new", "bob", "", "mail/x/new" },
		{ "mail/x%{detail}/new", "bob", "", "mail/x/new" },
		{ "mail/%{detail}%{local}/new", "bob", "", "mail/bob/new" },
		{ "mail/%{local}.%{detail}", "bob", "", "mail/bob." },
		/* a whole output made of one empty value stays empty (no component boundary) */
		{ "%{detail}", "bob", "", "" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct template_vars v = vars_default;

		v.local = cases[i].local;
		v.detail = cases[i].detail;
		expand_ok(cases[i].text, &v, TEMPLATE_PATH, cases[i].expected);
	}
}

/* RAW copies the same values untouched: the escaping is the caller's choice. */
Test(template, raw_does_not_escape)
{
	struct template_vars v = vars_default;

	v.local = "../x";
	v.detail = "";
	expand_ok("mail/%{local}/%{detail}/", &v, TEMPLATE_RAW, "mail/../x//");
}

Test(template, url_escaping)
{
	static const struct {
		const char *text;
		const char *value;
		const char *expected;
	} cases[] = {
		{ "https://api.test/in?rcpt=%{rcpt}", "bob+x@example.test",
		  "https://api.test/in?rcpt=bob%2Bx%40example.test" },
		{ "k/%{rcpt}", "A-Z_a.z~09", "k/A-Z_a.z~09" },
		{ "k/%{rcpt}", "a/b c", "k/a%2Fb%20c" },
		{ "k/%{rcpt}", "?#[]!$&'()*,;=:%", "k/%3F%23%5B%5D%21%24%26%27%28%29%2A%2C%3B%3D%3A%25" },
		{ "k/%{rcpt}", "\x01\x7f\xc3\xa9", "k/%01%7F%C3%A9" },
		{ "k/%{rcpt}", "..", "k/.." },
		/* literal text is copied as is */
		{ "a b?c=%{rcpt}&d", "x y", "a b?c=x%20y&d" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct template_vars v = vars_default;

		v.rcpt = cases[i].value;
		expand_ok(cases[i].text, &v, TEMPLATE_URL, cases[i].expected);
	}
}

Test(template, too_long)
{
	struct template *t = NULL;
	const char *error = NULL;
	char out[16];

	cr_assert_eq(template_compile("mail/%{rcpt}", &t, &error), 0);
	/* "mail/bob+lists@example.test" is 27 bytes */
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_RAW, out, sizeof(out), &error), -1);
	cr_assert_str_eq(error, "result too long");
	cr_assert_str_eq(out, "");

	/* exactly fitting: 27 bytes + NUL */
	char fit[28], small[27];
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_RAW, fit, sizeof(fit), &error), 0);
	cr_assert_str_eq(fit, "mail/bob+lists@example.test");
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_RAW, small, sizeof(small), &error),
		     -1);
	cr_assert_str_eq(error, "result too long");

	/* escaping makes it longer: "mail/bob%2Blists%40example.test" is 31 bytes */
	char url[31];
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_URL, url, sizeof(url), &error), -1);
	char url_fit[32];
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_URL, url_fit, sizeof(url_fit),
				     &error), 0);
	cr_assert_str_eq(url_fit, "mail/bob%2Blists%40example.test");

	/* size 0 and size 1 */
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_RAW, out, 0, &error), -1);
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_RAW, out, 1, &error), -1);
	cr_assert_str_eq(out, "");
	template_free(&t);

	/* a date, and the "_" of an empty component, count too */
	cr_assert_eq(template_compile("%{date:%Y-%m-%d}", &t, &error), 0);
	char d[10];
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_RAW, d, sizeof(d), &error), -1);
	cr_assert_str_eq(error, "result too long");
	char d_fit[11];
	cr_assert_eq(template_expand(t, &vars_default, TEMPLATE_RAW, d_fit, sizeof(d_fit), &error),
		     0);
	cr_assert_str_eq(d_fit, "2024-03-05");
	template_free(&t);

	struct template_vars v = vars_default;
	v.detail = "";
	cr_assert_eq(template_compile("ab/%{detail}", &t, &error), 0);
	char p[4], p_fit[5];
	cr_assert_eq(template_expand(t, &v, TEMPLATE_PATH, p, sizeof(p), &error), -1);
	cr_assert_eq(template_expand(t, &v, TEMPLATE_PATH, p_fit, sizeof(p_fit), &error), 0);
	cr_assert_str_eq(p_fit, "ab/_");
	template_free(&t);
}

Test(template, bad_escape_mode)
{
	struct template *t = NULL;
	const char *error = NULL;
	char out[64];

	cr_assert_eq(template_compile("x", &t, &error), 0);
	cr_assert_eq(template_expand(t, &vars_default, (enum template_escape)7, out, sizeof(out),
				     &error), -1);
	cr_assert_str_eq(error, "unknown escape mode");
	template_free(&t);
}

Test(template, uses)
{
	static const struct {
		const char *text;
		const char *name;
		int expected;
	} cases[] = {
		{ "%{date:%Y}/%{sha256}.eml", "sha256", 1 },
		{ "%{date:%Y}/%{sha256}.eml", "date", 1 },
		{ "%{date:%Y}/%{sha256}.eml", "local", 0 },
		{ "%{local}", "date", 0 },
		{ "%{local}", "local", 1 },
		{ "%{msgid}%{txid}", "txid", 1 },
		{ "%%{sha256}", "sha256", 0 },
		{ "sha256 date", "sha256", 0 },
		{ "%{local}", "nosuch", 0 },
		{ "%{local}", "", 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct template *t = NULL;
		const char *error = NULL;

		cr_assert_eq(template_compile(cases[i].text, &t, &error), 0);
		cr_assert_eq(template_uses(t, cases[i].name), cases[i].expected, "%s uses %s",
			     cases[i].text, cases[i].name);
		template_free(&t);
	}
}

Test(template, free_null)
{
	struct template *t = NULL;

	template_free(&t);
	cr_assert_null(t);
}
