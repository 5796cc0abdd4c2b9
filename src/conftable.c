/*
 * conftable - declarative key tables: defaults, values from a libconfig file or from text,
 * bounds, and printing back, all through the same `struct conf_key` rows, so a key cannot be
 * loaded one way and printed another. Generic: it knows nothing of lmtpgw's keys (config.c
 * holds those and the loader of lmtpgw.conf).
 *
 * Value conventions (the file is libconfig; these add units on top of it):
 *   SIZE      an integer (bytes) or a string with a K, M or G suffix (powers of 1024): "25M"
 *   DURATION  an integer (seconds) or a string "500ms", "30s", "5m", "1h", "1d"
 *   INT       an integer, or a string read by strtoll base 0. An INT whose default is written
 *             in octal ("0660": file modes) must be a string in the file, because libconfig
 *             reads a bare 0660 as decimal 660 and a wrong socket mode is silent.
 *   bounds    min..max in bytes / milliseconds; min > max means unbounded.
 * libconfig 1.5 truncates bare integers above 2^31 silently (unless suffixed L), so
 * conf_print writes large values as strings.
 * *
 * Error contract: functions return 0 or -1 with a message in the caller's buffer (conf_fail_at
 * and conf_apply_group: "file:line: message" in the loader's). Nothing here logs or exits.
 */
#include "conftable.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CONF_FIELD(base, key, type) ((type *)(void *)((char *)(base) + (key)->offset))
#define CONF_CFIELD(base, key, type) \
	((const type *)(const void *)((const char *)(base) + (key)->offset))

#define KIB 1024LL
#define MIB (1024LL * 1024)
#define GIB (1024LL * 1024 * 1024)

/* --- values -------------------------------------------------------------------------------- */

/* A non-negative decimal number at *p; advances *p. -1 on no digits or overflow. */
static int parse_digits(const char **p, long long *value_r)
{
	const char *s = *p;
	long long n = 0;

	if (!isdigit((unsigned char)*s))
		return -1;
	for (; isdigit((unsigned char)*s); s++) {
		int d = *s - '0';

		if (n > (LLONG_MAX - d) / 10)
			return -1;
		n = n * 10 + d;
	}
	*p = s;
	*value_r = n;
	return 0;
}

int conf_parse_size(const char *text, long long *bytes_r)
{
	const char *p = text;
	long long n, mult = 1;

	if (parse_digits(&p, &n) < 0)
		return -1;
	switch (*p) {
	case '\0': break;
	case 'k': case 'K': mult = KIB; p++; break;
	case 'm': case 'M': mult = MIB; p++; break;
	case 'g': case 'G': mult = GIB; p++; break;
	default: return -1;
	}
	if (*p != '\0' || n > LLONG_MAX / mult)
		return -1;
	*bytes_r = n * mult;
	return 0;
}

int conf_parse_duration(const char *text, long long *ms_r)
{
	static const struct { const char *unit; long long ms; } units[] = {
		{ "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60000 },
		{ "h", 3600000 }, { "d", 86400000 },
	};
	const char *p = text;
	long long n;

	if (parse_digits(&p, &n) < 0)
		return -1;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(p, units[i].unit) != 0)
			continue;
		if (n > LLONG_MAX / units[i].ms)
			return -1;
		*ms_r = n * units[i].ms;
		return 0;
	}
	return -1;
}

/* Octal-looking default ("0660", "0700"): a mode. Such keys are read and printed in octal. */
static bool key_is_octal(const struct conf_key *key)
{
	return key->type == CONF_INT && key->def != NULL && key->def[0] == '0' &&
	       key->def[1] >= '0' && key->def[1] <= '7';
}

/* A number as the file would write it, without quotes. human: durations in the largest exact
 * unit ("5m"); otherwise "300s" / "500ms", the form conf_print uses. */
static const char *format_number(const struct conf_key *key, long long v, bool human, char *buf,
				 size_t size)
{
	switch (key->type) {
	case CONF_SIZE:
		if (v != 0 && v % GIB == 0)
			snprintf(buf, size, "%lldG", v / GIB);
		else if (v != 0 && v % MIB == 0)
			snprintf(buf, size, "%lldM", v / MIB);
		else if (v != 0 && v % KIB == 0)
			snprintf(buf, size, "%lldK", v / KIB);
		else
			snprintf(buf, size, "%lld", v);
		break;
	case CONF_DURATION:
		if (human && v != 0 && v % 86400000 == 0)
			snprintf(buf, size, "%lldd", v / 86400000);
		else if (human && v != 0 && v % 3600000 == 0)
			snprintf(buf, size, "%lldh", v / 3600000);
		else if (human && v != 0 && v % 60000 == 0)
			snprintf(buf, size, "%lldm", v / 60000);
		else if (v % 1000 == 0)
			snprintf(buf, size, "%llds", v / 1000);
		else
			snprintf(buf, size, "%lldms", v);
		break;
	default:
		if (key_is_octal(key) && v >= 0)
			snprintf(buf, size, "%#llo", v);
		else
			snprintf(buf, size, "%lld", v);
		break;
	}
	return buf;
}

static int check_bounds(const struct conf_key *key, long long v, char *error_r, size_t error_size)
{
	char lo[32], hi[32];

	if (key->min > key->max || (v >= key->min && v <= key->max))
		return 0;
	snprintf(error_r, error_size, "'%s' must be between %s and %s", key->name,
		 format_number(key, key->min, true, lo, sizeof(lo)),
		 format_number(key, key->max, true, hi, sizeof(hi)));
	return -1;
}

static const char *type_requirement(const struct conf_key *key)
{
	switch (key->type) {
	case CONF_STRING: return "must be a string";
	case CONF_BOOL: return "must be true or false";
	case CONF_INT:
		return key_is_octal(key) ? "must be an octal string such as \"0660\" (libconfig "
					   "reads a bare 0660 as decimal 660)"
					 : "must be an integer";
	case CONF_SIZE: return "must be a size: bytes, or a string such as \"512K\", \"25M\", \"2G\"";
	case CONF_DURATION:
		return "must be a duration: seconds, or a string such as \"500ms\", \"30s\", \"5m\", "
		       "\"1h\"";
	case CONF_STRING_LIST: return "must be a string or a list of strings";
	case CONF_ENUM: return "must be one of";
	}
	return "has an unknown type";
}

/* "a, b, c" from an enum key's words. */
static void enum_words(const struct conf_key *key, char *buf, size_t size)
{
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; key->values[i] != NULL && len < size; i++) {
		int n = snprintf(buf + len, size - len, "%s%s", i > 0 ? ", " : "", key->values[i]);
		if (n < 0)
			break;
		len += (size_t)n;
	}
}

static int type_error(const struct conf_key *key, char *error_r, size_t error_size)
{
	if (key->type == CONF_ENUM) {
		char words[256];
		enum_words(key, words, sizeof(words));
		snprintf(error_r, error_size, "'%s' must be one of: %s", key->name, words);
		return -1;
	}
	snprintf(error_r, error_size, "'%s' %s", key->name, type_requirement(key));
	return -1;
}

const char *conf_enum_word(const struct conf_key *key, const void *base)
{
	int v = *CONF_CFIELD(base, key, int);
	size_t n = 0;

	while (key->values[n] != NULL)
		n++;
	return v >= 0 && (size_t)v < n ? key->values[v] : "?";
}

static void strlist_free(struct conf_strlist *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i]);
	free(list->items);
	list->items = NULL;
	list->count = 0;
}

static void strlist_add(struct conf_strlist *list, const char *s, size_t len)
{
	char **items = realloc(list->items, (list->count + 1) * sizeof(*items));

	if (items == NULL)
		abort();
	list->items = items;
	list->items[list->count] = strndup(s, len);
	if (list->items[list->count] == NULL)
		abort();
	list->count++;
}

char *conf_xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		abort();
	return p;
}

static void set_string(const struct conf_key *key, void *base, const char *value)
{
	char **field = CONF_FIELD(base, key, char *);

	free(*field);
	*field = value == NULL ? NULL : conf_xstrdup(value);
}

static int set_number(const struct conf_key *key, void *base, long long v, char *error_r,
		      size_t error_size)
{
	if (check_bounds(key, v, error_r, error_size) < 0)
		return -1;
	*CONF_FIELD(base, key, long long) = v;
	return 0;
}

int conf_parse_value(const struct conf_key *key, const char *text, void *base, char *error_r,
		     size_t error_size)
{
	long long v;
	char *end;

	switch (key->type) {
	case CONF_STRING:
		set_string(key, base, text);
		return 0;
	case CONF_BOOL: {
		static const char *const yes[] = { "true", "yes", "on", "1", NULL };
		static const char *const no[] = { "false", "no", "off", "0", NULL };

		for (size_t i = 0; yes[i] != NULL; i++) {
			if (strcasecmp(text, yes[i]) == 0) {
				*CONF_FIELD(base, key, bool) = true;
				return 0;
			}
			if (strcasecmp(text, no[i]) == 0) {
				*CONF_FIELD(base, key, bool) = false;
				return 0;
			}
		}
		return type_error(key, error_r, error_size);
	}
	case CONF_INT:
		errno = 0;
		v = strtoll(text, &end, 0);
		if (errno != 0 || end == text || *end != '\0' || isspace((unsigned char)text[0])) {
			snprintf(error_r, error_size, "'%s' must be an integer (got \"%.40s\")",
				 key->name, text);
			return -1;
		}
		return set_number(key, base, v, error_r, error_size);
	case CONF_SIZE:
		if (conf_parse_size(text, &v) < 0) {
			snprintf(error_r, error_size, "'%s' %s (got \"%.40s\")", key->name,
				 type_requirement(key), text);
			return -1;
		}
		return set_number(key, base, v, error_r, error_size);
	case CONF_DURATION:
		if (conf_parse_duration(text, &v) < 0) {
			snprintf(error_r, error_size, "'%s' %s (got \"%.40s\")", key->name,
				 type_requirement(key), text);
			return -1;
		}
		return set_number(key, base, v, error_r, error_size);
	case CONF_ENUM:
		for (size_t i = 0; key->values[i] != NULL; i++) {
			if (strcmp(text, key->values[i]) == 0) {
				*CONF_FIELD(base, key, int) = (int)i;
				return 0;
			}
		}
		{
			char words[256];
			enum_words(key, words, sizeof(words));
			snprintf(error_r, error_size, "'%s' must be one of: %s (got \"%.40s\")",
				 key->name, words, text);
		}
		return -1;
	case CONF_STRING_LIST: {
		struct conf_strlist *list = CONF_FIELD(base, key, struct conf_strlist);

		/* Text has no list syntax: "a, b" is two items (command-line overrides). */
		strlist_free(list);
		for (const char *p = text; *p != '\0';) {
			size_t len = strcspn(p, ",");
			const char *s = p, *e = p + len;

			while (s < e && isspace((unsigned char)*s))
				s++;
			while (e > s && isspace((unsigned char)e[-1]))
				e--;
			if (e > s)
				strlist_add(list, s, (size_t)(e - s));
			p += len;
			if (*p == ',')
				p++;
		}
		return 0;
	}
	}
	return type_error(key, error_r, error_size);
}

int conf_defaults(const struct conf_key *keys, void *base, char *error_r, size_t error_size)
{
	char msg[256];

	for (const struct conf_key *key = keys; key->name != NULL; key++) {
		if (key->def == NULL)
			continue;
		if (conf_parse_value(key, key->def, base, msg, sizeof(msg)) < 0) {
			snprintf(error_r, error_size, "bad default for %s", msg);
			return -1;
		}
	}
	return 0;
}

void conf_release(const struct conf_key *keys, void *base)
{
	for (const struct conf_key *key = keys; key->name != NULL; key++) {
		if (key->type == CONF_STRING)
			set_string(key, base, NULL);
		else if (key->type == CONF_STRING_LIST)
			strlist_free(CONF_FIELD(base, key, struct conf_strlist));
	}
}

/* A libconfig string literal: quotes, backslashes and control bytes escaped; UTF-8 as is. */
void conf_print_string(FILE *out, const char *s)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		switch (*p) {
		case '"': fputs("\\\"", out); break;
		case '\\': fputs("\\\\", out); break;
		case '\n': fputs("\\n", out); break;
		case '\r': fputs("\\r", out); break;
		case '\t': fputs("\\t", out); break;
		case '\f': fputs("\\f", out); break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				fprintf(out, "\\x%02x", *p);
			else
				fputc(*p, out);
		}
	}
	fputc('"', out);
}

void conf_print(FILE *out, const struct conf_key *keys, const void *base, int indent)
{
	char buf[64];

	for (const struct conf_key *key = keys; key->name != NULL; key++) {
		fprintf(out, "%*s", indent, "");
		switch (key->type) {
		case CONF_STRING: {
			const char *s = *CONF_CFIELD(base, key, char *);

			/* libconfig has no null: leave the key out, which reads back as unset. */
			if (s == NULL) {
				fprintf(out, "# %s is not set\n", key->name);
				continue;
			}
			fprintf(out, "%s = ", key->name);
			conf_print_string(out, s);
			break;
		}
		case CONF_BOOL:
			fprintf(out, "%s = %s", key->name,
				*CONF_CFIELD(base, key, bool) ? "true" : "false");
			break;
		case CONF_INT:
		case CONF_SIZE:
		case CONF_DURATION: {
			long long v = *CONF_CFIELD(base, key, long long);
			bool quote = key->type == CONF_DURATION || key_is_octal(key) ||
				     v > INT_MAX || v < INT_MIN;

			format_number(key, v, false, buf, sizeof(buf));
			if (key->type == CONF_SIZE && strpbrk(buf, "KMG") != NULL)
				quote = true;
			/* A plain INT that big is written as libconfig's 64-bit literal instead. */
			if (key->type == CONF_INT && !key_is_octal(key) && quote) {
				fprintf(out, "%s = %lldL", key->name, v);
				break;
			}
			fprintf(out, quote ? "%s = \"%s\"" : "%s = %s", key->name, buf);
			break;
		}
		case CONF_ENUM: {
			char words[256];

			fprintf(out, "%s = ", key->name);
			conf_print_string(out, conf_enum_word(key, base));
			enum_words(key, words, sizeof(words));
			/* The allowed words, listed once in the table, shown where an admin looks. */
			fprintf(out, "; # one of: %s\n", words);
			continue;
		}
		case CONF_STRING_LIST: {
			const struct conf_strlist *list = CONF_CFIELD(base, key, struct conf_strlist);

			fprintf(out, "%s = [", key->name);
			for (size_t i = 0; i < list->count; i++) {
				fputs(i == 0 ? " " : ", ", out);
				conf_print_string(out, list->items[i]);
			}
			fputs(" ]", out);
			break;
		}
		}
		fputs(";\n", out);
	}
}

/* --- reading the file ---------------------------------------------------------------------- */

/* "file:line: message" for a setting (just "file: " when s is NULL or has no line). */
int conf_fail_at(struct conf_loader *ld, const config_setting_t *s, const char *fmt, ...)
{
	const char *file = s != NULL ? config_setting_source_file(s) : NULL;
	unsigned line = s != NULL ? config_setting_source_line(s) : 0;
	int n;
	va_list ap;

	if (file == NULL)
		file = ld->path;
	if (line > 0)
		n = snprintf(ld->error_r, ld->error_size, "%s:%u: ", file, line);
	else
		n = snprintf(ld->error_r, ld->error_size, "%s: ", file);
	if (n < 0 || (size_t)n >= ld->error_size)
		return -1;
	va_start(ap, fmt);
	vsnprintf(ld->error_r + n, ld->error_size - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* One setting of the file into its field; error text without location. */
static int apply_setting(const struct conf_key *key, const config_setting_t *s, void *base,
			 char *error_r, size_t error_size)
{
	int type = config_setting_type(s);
	bool is_int = type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64;
	long long v;

	switch (key->type) {
	case CONF_STRING:
		if (type != CONFIG_TYPE_STRING)
			return type_error(key, error_r, error_size);
		set_string(key, base, config_setting_get_string(s));
		return 0;
	case CONF_ENUM:
		if (type != CONFIG_TYPE_STRING)
			return type_error(key, error_r, error_size);
		return conf_parse_value(key, config_setting_get_string(s), base, error_r,
					error_size);
	case CONF_BOOL:
		if (type != CONFIG_TYPE_BOOL)
			return type_error(key, error_r, error_size);
		*CONF_FIELD(base, key, bool) = config_setting_get_bool(s) != 0;
		return 0;
	case CONF_INT:
	case CONF_SIZE:
	case CONF_DURATION:
		if (type == CONFIG_TYPE_STRING)
			return conf_parse_value(key, config_setting_get_string(s), base, error_r,
						error_size);
		if (!is_int || key_is_octal(key))
			return type_error(key, error_r, error_size);
		v = config_setting_get_int64(s);
		if (key->type != CONF_INT && v < 0)
			return type_error(key, error_r, error_size);
		if (key->type == CONF_DURATION) {
			if (v > LLONG_MAX / 1000)
				return type_error(key, error_r, error_size);
			v *= 1000; /* a bare number is seconds */
		}
		return set_number(key, base, v, error_r, error_size);
	case CONF_STRING_LIST: {
		struct conf_strlist list = { NULL, 0 };

		if (type == CONFIG_TYPE_STRING) {
			const char *str = config_setting_get_string(s);

			strlist_add(&list, str, strlen(str));
		} else if (type == CONFIG_TYPE_ARRAY || type == CONFIG_TYPE_LIST) {
			for (int i = 0; i < config_setting_length(s); i++) {
				const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
				const char *str;

				if (config_setting_type(e) != CONFIG_TYPE_STRING) {
					strlist_free(&list);
					return type_error(key, error_r, error_size);
				}
				str = config_setting_get_string(e);
				strlist_add(&list, str, strlen(str));
			}
		} else {
			return type_error(key, error_r, error_size);
		}
		strlist_free(CONF_FIELD(base, key, struct conf_strlist));
		*CONF_FIELD(base, key, struct conf_strlist) = list;
		return 0;
	}
	}
	return type_error(key, error_r, error_size);
}

const struct conf_key *conf_key_find(const struct conf_key *keys, const char *name)
{
	for (const struct conf_key *key = keys; key->name != NULL; key++) {
		if (strcmp(key->name, name) == 0)
			return key;
	}
	return NULL;
}

/* Every member of group into the first table that knows it. section names the group in
 * messages ("backend 'x'"); global: no prefix on value errors. reserved: names the caller
 * reads itself (NULL-terminated, may be NULL). */
int conf_apply_group(struct conf_loader *ld, const config_setting_t *group,
		     const struct conf_table *tables, size_t ntables, const char *section,
		     bool global, const char *const *reserved)
{
	char msg[512];

	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(s);
		const struct conf_key *key = NULL;
		size_t t;
		bool skip = false;

		for (size_t r = 0; reserved != NULL && reserved[r] != NULL; r++)
			skip = skip || strcmp(reserved[r], name) == 0;
		if (skip)
			continue;
		for (t = 0; t < ntables && key == NULL; t++)
			key = conf_key_find(tables[t].keys, name);
		if (key == NULL)
			return conf_fail_at(ld, s, "unknown key '%s' in %s", name, section);
		if (apply_setting(key, s, tables[t - 1].base, msg, sizeof(msg)) < 0)
			return global ? conf_fail_at(ld, s, "%s", msg)
				      : conf_fail_at(ld, s, "%s: %s", section, msg);
	}
	return 0;
}
