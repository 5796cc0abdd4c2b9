/*
 * conftable - declarative key tables (generic; lmtpgw's own tables are in config.c and in each
 * driver).
 *
 * A table is an array of `struct conf_key` rows ending with a NULL name. Each row says where
 * its value lives (an offset into the struct the table fills), its type, its default in
 * config-file syntax, its bounds or allowed words, and a one-line description. The same rows
 * fill defaults, read a libconfig group, parse text overrides, and print the values back.
 *
 * Error contract: 0 or -1 with a message in the caller's buffer; nothing logs or exits.
 */
#ifndef LMTPGW_CONFTABLE_H
#define LMTPGW_CONFTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum conf_type {
	CONF_STRING,      /* char *; NULL default allowed */
	CONF_BOOL,        /* bool */
	CONF_INT,         /* long long */
	CONF_SIZE,        /* long long bytes; 1048576, "512K", "50M", "2G" */
	CONF_DURATION,    /* long long milliseconds; 30 (seconds), "500ms", "30s", "5m", "1h" */
	CONF_STRING_LIST, /* struct conf_strlist; a string or a list of strings */
	CONF_ENUM,        /* int: index into the key's values (a string in the file) */
};

struct conf_strlist {
	char **items;
	size_t count;
};

struct conf_key {
	const char *name;
	enum conf_type type;
	size_t offset;          /* offsetof the field in the struct the table fills */
	const char *def;        /* default in config-file syntax ("300s", "true", "25M"), NULL: none */
	long long min, max;     /* bounds for INT/SIZE/DURATION (in bytes/ms); min > max: unbounded */
	const char *doc;        /* one-line description (docs and `lmtpgw -n`) */
	/* CONF_ENUM: the allowed words, NULL-terminated; the field holds the index of the one
	 * chosen. Listed once here: the loader's message, `lmtpgw -n` and the docs test use it. */
	const char *const *values;
};

/* Fill base from the table's defaults. Returns -1 only if a default itself does not parse
 * (a bug, caught by the unit tests). */
int conf_defaults(const struct conf_key *keys, void *base, char *error_r, size_t error_size);
/* Free the strings and lists the table filled in base. */
void conf_release(const struct conf_key *keys, void *base);
/* Parse a value given as text (as a default is) into its field; used by conf_defaults and by
 * the `--set key=value` style overrides. Replaces (and frees) the field's previous value, so
 * base must start zeroed. INT text is read by strtoll base 0 ("0660" is octal); a
 * STRING_LIST text is split on commas. */
int conf_parse_value(const struct conf_key *key, const char *text, void *base, char *error_r,
		     size_t error_size);
/* Print "name = value;" lines for every key of the table, values as config-file syntax. */
void conf_print(FILE *out, const struct conf_key *keys, const void *base, int indent);
/* s as a libconfig string literal (quotes, backslashes and control bytes escaped), for
 * printers of values no row describes (a route's deliver list). */
void conf_print_string(FILE *out, const char *s);
/* Parse "25M" etc.; return -1 on syntax error or overflow. */
int conf_parse_size(const char *text, long long *bytes_r);
int conf_parse_duration(const char *text, long long *ms_r);

/* The word of a CONF_ENUM key's current value in base. */
const char *conf_enum_word(const struct conf_key *key, const void *base);
/* The table's row named name, or NULL. */
const struct conf_key *conf_key_find(const struct conf_key *keys, const char *name);

/* strdup that aborts when memory runs out. */
char *conf_xstrdup(const char *s);

/* --- reading a libconfig file through tables --- */

struct config_setting_t;

struct conf_loader {
	const char *path;              /* the file, for messages without a setting */
	char *error_r;
	size_t error_size;
};

/* Write "file:line: message" for setting s (just "file: " when s is NULL or has no line) into
 * the loader's buffer; returns -1, so `return conf_fail_at(...)` reads naturally. */
int conf_fail_at(struct conf_loader *ld, const struct config_setting_t *s, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

struct conf_table {
	const struct conf_key *keys;
	void *base;
};

/* Every member of group into the first table that knows it. section names the group in
 * messages ("backend 'x'"); global: no prefix on value errors. reserved: names the caller
 * reads itself (NULL-terminated, may be NULL). */
int conf_apply_group(struct conf_loader *ld, const struct config_setting_t *group,
		     const struct conf_table *tables, size_t ntables, const char *section,
		     bool global, const char *const *reserved);

#endif
