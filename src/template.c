/*
 * template - "%{name}" substitution for paths, keys, folders and URLs.
 *
 * template_compile() parses the text once into a list of parts (literal bytes, a variable, or
 * a date with its strftime format), so a typo is refused when the configuration loads and
 * expansion is a plain walk over the parts. A compiled template owns a copy of its source and
 * one buffer holding every literal and date format; nothing else is allocated.
 *
 * Expansion is bounded by the caller's buffer: it fails with "result too long" rather than
 * truncating, since a truncated path or S3 key would silently deliver to the wrong place. On
 * failure the output buffer holds "" (when it has room for the NUL).
 *
 * Escaping applies to values only (the recipient, sender, Message-ID... come from outside).
 * Literal text and %{date:...} output come from the configuration and our own clock, so they
 * are copied as they are: "%{date:%Y/%m/%d}" is meant to make directories.
 *
 * Error contract: 0, or -1 with a short static reason in *error_r.
 */
#include "template.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Longest date format, as documented in template.h. */
#define TEMPLATE_DATE_FORMAT_MAX 64
/* Longest output of one %{date:...}; checked at compile time with a sample time. */
#define TEMPLATE_DATE_OUTPUT_MAX 1024
#define TEMPLATE_DATE_PREFIX "date:"

enum template_var {
	VAR_LOCAL,
	VAR_DETAIL,
	VAR_USER,
	VAR_DOMAIN,
	VAR_RCPT,
	VAR_SENDER,
	VAR_SHA256,
	VAR_MSGID,
	VAR_SESSION,
	VAR_TXID,
};

static const struct {
	const char *name;
	enum template_var var;
} template_var_names[] = {
	{ "local", VAR_LOCAL },
	{ "detail", VAR_DETAIL },
	{ "user", VAR_USER },
	{ "domain", VAR_DOMAIN },
	{ "rcpt", VAR_RCPT },
	{ "sender", VAR_SENDER },
	{ "sha256", VAR_SHA256 },
	{ "msgid", VAR_MSGID },
	{ "session", VAR_SESSION },
	{ "txid", VAR_TXID },
};

#define TEMPLATE_VAR_COUNT (sizeof(template_var_names) / sizeof(template_var_names[0]))

enum template_part_kind {
	PART_LITERAL,
	PART_VAR,
	PART_DATE,
};

struct template_part {
	enum template_part_kind kind;
	enum template_var var;   /* PART_VAR */
	size_t offset;           /* into strings: literal bytes, or the date format */
	size_t length;           /* PART_LITERAL: byte count */
};

struct template {
	char *source;
	/* Literal bytes back to back, and each date format as "X<format>\0": the leading 'X'
	 * makes strftime's output never empty, so a 0 return can only mean "did not fit". */
	char *strings;
	struct template_part *parts;
	size_t part_count;
};

static int template_add_part(struct template *tmpl, size_t *alloc,
			     const struct template_part *part)
{
	if (tmpl->part_count == *alloc) {
		size_t n = *alloc == 0 ? 8 : *alloc * 2;
		struct template_part *p = realloc(tmpl->parts, n * sizeof(*p));

		if (p == NULL)
			return -1;
		tmpl->parts = p;
		*alloc = n;
	}
	tmpl->parts[tmpl->part_count++] = *part;
	return 0;
}

static int template_var_lookup(const char *name, size_t len, enum template_var *var_r)
{
	for (size_t i = 0; i < TEMPLATE_VAR_COUNT; i++) {
		if (strlen(template_var_names[i].name) == len &&
		    memcmp(template_var_names[i].name, name, len) == 0) {
			*var_r = template_var_names[i].var;
			return 0;
		}
	}
	return -1;
}

/* Check a date format (stored with its 'X' prefix) against a sample time, so that a format
 * whose output cannot fit our buffer is refused at load rather than at delivery. */
static int template_date_check(const char *fmt)
{
	char buf[TEMPLATE_DATE_OUTPUT_MAX];
	struct tm tm;
	/* A date with two-digit fields everywhere: 2038-12-31 23:59:59 UTC is wider than most. */
	time_t sample = 2177452799;

	if (gmtime_r(&sample, &tm) == NULL)
		return -1;
	return strftime(buf, sizeof(buf), fmt, &tm) == 0 ? -1 : 0;
}

/*
 * template = *( literal / "%%" / "%{" name "}" / "%{date:" format "}" )
 * format   = 1*64( any byte but "}" )
 */
int template_compile(const char *text, struct template **tmpl_r, const char **error_r)
{
	struct template *tmpl;
	size_t len, alloc = 0, used = 0, i = 0;
	const char *error = "out of memory";

	*tmpl_r = NULL;
	if (text == NULL) {
		*error_r = "no template";
		return -1;
	}
	len = strlen(text);
	tmpl = calloc(1, sizeof(*tmpl));
	if (tmpl == NULL)
		goto fail;
	tmpl->source = strdup(text);
	/* Every part stores no more bytes than its source text took ("%{date:F}" -> "XF\0"). */
	tmpl->strings = malloc(len + 1);
	if (tmpl->source == NULL || tmpl->strings == NULL)
		goto fail;

	while (i < len) {
		struct template_part part = { 0 };

		if (text[i] != '%' || text[i + 1] == '%') {
			/* Literal byte; "%%" is a literal '%'. Merge into the previous literal. */
			struct template_part *last = tmpl->part_count > 0 ?
				&tmpl->parts[tmpl->part_count - 1] : NULL;

			if (last == NULL || last->kind != PART_LITERAL ||
			    last->offset + last->length != used) {
				part.kind = PART_LITERAL;
				part.offset = used;
				if (template_add_part(tmpl, &alloc, &part) < 0)
					goto fail;
				last = &tmpl->parts[tmpl->part_count - 1];
			}
			tmpl->strings[used++] = text[i];
			last->length++;
			i += text[i] == '%' ? 2 : 1;
			continue;
		}
		if (text[i + 1] != '{') {
			error = "'%' must be followed by '{' or '%'";
			goto fail;
		}
		const char *name = text + i + 2;
		const char *end = strchr(name, '}');

		if (end == NULL) {
			error = "unterminated '%{'";
			goto fail;
		}
		size_t name_len = (size_t)(end - name);
		size_t prefix_len = strlen(TEMPLATE_DATE_PREFIX);

		if (name_len >= prefix_len && memcmp(name, TEMPLATE_DATE_PREFIX, prefix_len) == 0) {
			const char *fmt = name + prefix_len;
			size_t fmt_len = name_len - prefix_len;

			if (fmt_len == 0) {
				error = "empty date format";
				goto fail;
			}
			if (fmt_len > TEMPLATE_DATE_FORMAT_MAX) {
				error = "date format longer than 64 characters";
				goto fail;
			}
			part.kind = PART_DATE;
			part.offset = used;
			tmpl->strings[used++] = 'X';
			memcpy(tmpl->strings + used, fmt, fmt_len);
			used += fmt_len;
			tmpl->strings[used++] = '\0';
			if (template_date_check(tmpl->strings + part.offset) < 0) {
				error = "date format expands too long";
				goto fail;
			}
		} else {
			part.kind = PART_VAR;
			if (template_var_lookup(name, name_len, &part.var) < 0) {
				error = "unknown variable";
				goto fail;
			}
		}
		if (template_add_part(tmpl, &alloc, &part) < 0)
			goto fail;
		i = (size_t)(end - text) + 1;
	}
	*tmpl_r = tmpl;
	return 0;

fail:
	template_free(&tmpl);
	*error_r = error;
	return -1;
}

void template_free(struct template **tmpl)
{
	if (*tmpl == NULL)
		return;
	free((*tmpl)->source);
	free((*tmpl)->strings);
	free((*tmpl)->parts);
	free(*tmpl);
	*tmpl = NULL;
}

const char *template_source(const struct template *tmpl)
{
	return tmpl->source;
}

int template_uses(const struct template *tmpl, const char *name)
{
	int is_date = strcmp(name, "date") == 0;
	enum template_var var = VAR_LOCAL;

	if (!is_date && template_var_lookup(name, strlen(name), &var) < 0)
		return 0;
	for (size_t i = 0; i < tmpl->part_count; i++) {
		const struct template_part *p = &tmpl->parts[i];

		if (is_date ? p->kind == PART_DATE : (p->kind == PART_VAR && p->var == var))
			return 1;
	}
	return 0;
}

/* The output being built. Every byte goes through out_byte(), so the PATH rule for empty
 * values can look at what actually follows them, whichever part produced it. */
struct template_out {
	char *buf;
	size_t size;
	size_t pos;
	int overflow;
	/* PATH: an empty value sits at the start of a path component; it becomes "_" if the
	 * component ends right after it ('/' or end of output). */
	int pending_empty;
};

static void out_raw(struct template_out *o, char c)
{
	/* Always keep one byte for the NUL. */
	if (o->overflow || o->pos + 1 >= o->size) {
		o->overflow = 1;
		return;
	}
	o->buf[o->pos++] = c;
}

static void out_byte(struct template_out *o, char c)
{
	if (o->pending_empty) {
		o->pending_empty = 0;
		if (c == '/')
			out_raw(o, '_');
	}
	out_raw(o, c);
}

static void out_pct(struct template_out *o, unsigned char c)
{
	static const char hex[] = "0123456789ABCDEF";

	out_byte(o, '%');
	out_byte(o, hex[c >> 4]);
	out_byte(o, hex[c & 0x0f]);
}

static int out_at_component_start(const struct template_out *o)
{
	return o->pos == 0 || o->buf[o->pos - 1] == '/';
}

/* True when the path component written so far is "", "." or ".." (or more dots): a '.' from
 * a value here could make "." or "..", or hide the file. */
static int out_component_only_dots(const struct template_out *o)
{
	for (size_t i = o->pos; i > 0; i--) {
		if (o->buf[i - 1] == '/')
			return 1;
		if (o->buf[i - 1] != '.')
			return 0;
	}
	return 1;
}

/* RFC 3986 section 2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~" */
static int url_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

static void out_value(struct template_out *o, const char *value, enum template_escape escape)
{
	const unsigned char *v = (const unsigned char *)(value == NULL ? "" : value);

	switch (escape) {
	case TEMPLATE_RAW:
		for (; *v != '\0'; v++)
			out_byte(o, (char)*v);
		break;
	case TEMPLATE_URL:
		for (; *v != '\0'; v++) {
			if (url_unreserved(*v))
				out_byte(o, (char)*v);
			else
				out_pct(o, *v);
		}
		break;
	case TEMPLATE_PATH:
		if (*v == '\0') {
			if (out_at_component_start(o))
				o->pending_empty = 1;
			break;
		}
		/* A leading '.' is decided on the output, not the value: "%{local}%{detail}" with
		 * an empty local still puts detail's first byte at the start of the component. */
		if (*v == '.' && out_component_only_dots(o)) {
			out_pct(o, *v);
			v++;
		}
		for (; *v != '\0'; v++) {
			if (*v == '/' || *v == '%' || *v < 0x20 || *v == 0x7f)
				out_pct(o, *v);
			else
				out_byte(o, (char)*v);
		}
		break;
	}
}

static const char *template_var_value(const struct template_vars *vars, enum template_var var)
{
	switch (var) {
	case VAR_LOCAL: return vars->local;
	case VAR_DETAIL: return vars->detail;
	case VAR_USER: return vars->user;
	case VAR_DOMAIN: return vars->domain;
	case VAR_RCPT: return vars->rcpt;
	case VAR_SENDER: return vars->sender;
	case VAR_SHA256: return vars->sha256;
	case VAR_MSGID: return vars->msgid;
	case VAR_SESSION: return vars->session;
	case VAR_TXID: return vars->txid;
	}
	return NULL;
}

int template_expand(const struct template *tmpl, const struct template_vars *vars,
		    enum template_escape escape, char *out, size_t size, const char **error_r)
{
	struct template_out o = { .buf = out, .size = size };
	struct tm tm;
	int have_tm = 0;

	if (escape != TEMPLATE_RAW && escape != TEMPLATE_PATH && escape != TEMPLATE_URL) {
		*error_r = "unknown escape mode";
		goto fail;
	}
	for (size_t i = 0; i < tmpl->part_count && !o.overflow; i++) {
		const struct template_part *p = &tmpl->parts[i];
		const char *s = tmpl->strings + p->offset;
		char date[TEMPLATE_DATE_OUTPUT_MAX];
		size_t n;

		switch (p->kind) {
		case PART_LITERAL:
			for (n = 0; n < p->length; n++)
				out_byte(&o, s[n]);
			break;
		case PART_VAR:
			out_value(&o, template_var_value(vars, p->var), escape);
			break;
		case PART_DATE:
			if (!have_tm) {
				if (gmtime_r(&vars->received, &tm) == NULL) {
					*error_r = "received time out of range";
					goto fail;
				}
				have_tm = 1;
			}
			/* s is "X<format>": 0 can only mean the output did not fit. */
			n = strftime(date, sizeof(date), s, &tm);
			if (n == 0) {
				*error_r = "result too long";
				goto fail;
			}
			for (size_t k = 1; k < n; k++)
				out_byte(&o, date[k]);
			break;
		}
	}
	if (o.pending_empty && o.pos > 0)
		out_raw(&o, '_');   /* "a/%{detail}" with no detail: "a/_" */
	if (o.overflow || size == 0) {
		*error_r = "result too long";
		goto fail;
	}
	out[o.pos] = '\0';
	return 0;

fail:
	if (size > 0)
		out[0] = '\0';
	return -1;
}
