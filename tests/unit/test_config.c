/*
 * test_config - config.c: value parsing tables, defaults, every class of load error with its
 * "file:line:" message, and config_print output read back by config_load.
 *
 * Each test writes small files into its own temporary directory. Backends use the discard
 * driver only, so these tests do not depend on maildir.
 */
#include <criterion/criterion.h>

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "config.h"
#include "log.h"
#include "runtime.h"
#include "router.h"

extern const struct backend_driver backend_discard;

static char tmpdir[64];
static char conf_path[128];
static char err[1024];

#define BACKEND_SINK "backends: { sink: { driver = \"discard\"; }; };\n"
#define ROUTE_ALL "routes = ( { match = \"*\"; deliver = \"sink\"; } );\n"

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/lmtpgw-test-config-XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
	snprintf(conf_path, sizeof(conf_path), "%s/t.conf", tmpdir);
	err[0] = '\0';
}

static void teardown(void)
{
	nftw(tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f, "cannot write %s", path);
	fputs(text, f);
	fclose(f);
}

/* Load text as `lmtpgw check` does: the settings, then every backend's driver opened. */
static struct config *load_text(const char *text)
{
	write_file(conf_path, text);
	err[0] = '\0';
	struct config *cfg = config_load(conf_path, err, sizeof(err));
	if (cfg == NULL)
		return NULL;
	struct runtime *rt = runtime_open(config_ref(cfg), NULL, err, sizeof(err));
	if (rt == NULL) {
		config_unref(&cfg);
		return NULL;
	}
	runtime_unref(&rt);
	return cfg;
}

/* Loading text must fail with exactly "<conf_path>:<line>: <message>" (line 0: no line). */
static void expect_error(const char *text, int line, const char *message)
{
	char want[2048];
	struct config *cfg = load_text(text);

	cr_assert_null(cfg, "loaded although it should fail with: %s", message);
	if (line > 0)
		snprintf(want, sizeof(want), "%s:%d: %s", conf_path, line, message);
	else
		snprintf(want, sizeof(want), "%s: %s", conf_path, message);
	cr_assert_str_eq(err, want);
}

static char *print_to_string(const struct config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);

	cr_assert_not_null(out);
	config_print(out, cfg);
	fclose(out);
	return buf;
}

TestSuite(config, .init = setup, .fini = teardown);

/* --- values -------------------------------------------------------------------------------- */

Test(config, parse_size_table)
{
	static const struct { const char *text; int ret; long long bytes; } cases[] = {
		{ "0", 0, 0 },
		{ "1048576", 0, 1048576 },
		{ "512K", 0, 512 * 1024LL },
		{ "512k", 0, 512 * 1024LL },
		{ "25M", 0, 25 * 1024LL * 1024 },
		{ "2G", 0, 2 * 1024LL * 1024 * 1024 },
		{ "9223372036854775807", 0, LLONG_MAX },
		{ "", -1, 0 },
		{ "K", -1, 0 },
		{ "25Q", -1, 0 },
		{ "10KB", -1, 0 },
		{ "1.5M", -1, 0 },
		{ "-1", -1, 0 },
		{ " 1", -1, 0 },
		{ "1 ", -1, 0 },
		{ "9223372036854775808", -1, 0 },
		{ "9007199254740992K", -1, 0 },
		{ "99999999999999999999G", -1, 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		long long v = -42;

		cr_expect_eq(conf_parse_size(cases[i].text, &v), cases[i].ret, "\"%s\"",
			     cases[i].text);
		if (cases[i].ret == 0)
			cr_expect_eq(v, cases[i].bytes, "\"%s\" -> %lld", cases[i].text, v);
		else
			cr_expect_eq(v, -42, "\"%s\" wrote the output on failure", cases[i].text);
	}
}

Test(config, parse_duration_table)
{
	static const struct { const char *text; int ret; long long ms; } cases[] = {
		{ "0", 0, 0 },
		{ "30", 0, 30000 },
		{ "500ms", 0, 500 },
		{ "30s", 0, 30000 },
		{ "5m", 0, 300000 },
		{ "1h", 0, 3600000 },
		{ "1d", 0, 86400000 },
		{ "", -1, 0 },
		{ "ms", -1, 0 },
		{ "5x", -1, 0 },
		{ "5 m", -1, 0 },
		{ "5M", -1, 0 },
		{ "-5s", -1, 0 },
		{ "1.5s", -1, 0 },
		{ "5mss", -1, 0 },
		{ "9223372036854775807", -1, 0 },
		{ "9223372036854775807ms", 0, LLONG_MAX },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		long long v = -42;

		cr_expect_eq(conf_parse_duration(cases[i].text, &v), cases[i].ret, "\"%s\"",
			     cases[i].text);
		if (cases[i].ret == 0)
			cr_expect_eq(v, cases[i].ms, "\"%s\" -> %lld", cases[i].text, v);
	}
}

struct sample {
	char *s;
	bool b;
	long long i, mode, size, dur;
	struct conf_strlist list;
};

static const struct conf_key sample_keys[] = {
	{ "s", CONF_STRING, offsetof(struct sample, s), "hello", 1, 0, "a string" },
	{ "b", CONF_BOOL, offsetof(struct sample, b), "true", 1, 0, "a bool" },
	{ "i", CONF_INT, offsetof(struct sample, i), "7", 1, 10, "an int" },
	{ "mode", CONF_INT, offsetof(struct sample, mode), "0640", 0, 0777, "a mode" },
	{ "size", CONF_SIZE, offsetof(struct sample, size), "4K", 1024, 1024 * 1024, "a size" },
	{ "dur", CONF_DURATION, offsetof(struct sample, dur), "1500ms", 1, 0, "unbounded" },
	{ "list", CONF_STRING_LIST, offsetof(struct sample, list), "a, b ,,c", 1, 0, "a list" },
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

Test(config, defaults_and_text_values)
{
	struct sample s = { 0 };
	char e[256];

	cr_assert_eq(conf_defaults(sample_keys, &s, e, sizeof(e)), 0, "%s", e);
	cr_expect_str_eq(s.s, "hello");
	cr_expect(s.b);
	cr_expect_eq(s.i, 7);
	cr_expect_eq(s.mode, 0640);
	cr_expect_eq(s.size, 4096);
	cr_expect_eq(s.dur, 1500);
	cr_assert_eq(s.list.count, 3);
	cr_expect_str_eq(s.list.items[0], "a");
	cr_expect_str_eq(s.list.items[1], "b");
	cr_expect_str_eq(s.list.items[2], "c");

	/* Overrides replace (and free) the previous values. */
	cr_expect_eq(conf_parse_value(&sample_keys[0], "bye", &s, e, sizeof(e)), 0);
	cr_expect_str_eq(s.s, "bye");
	cr_expect_eq(conf_parse_value(&sample_keys[1], "off", &s, e, sizeof(e)), 0);
	cr_expect(!s.b);
	cr_expect_eq(conf_parse_value(&sample_keys[1], "maybe", &s, e, sizeof(e)), -1);
	cr_expect_str_eq(e, "'b' must be true or false");
	cr_expect_eq(conf_parse_value(&sample_keys[2], "0x0a", &s, e, sizeof(e)), 0);
	cr_expect_eq(s.i, 10);
	cr_expect_eq(conf_parse_value(&sample_keys[2], "11", &s, e, sizeof(e)), -1);
	cr_expect_str_eq(e, "'i' must be between 1 and 10");
	cr_expect_eq(conf_parse_value(&sample_keys[2], "7x", &s, e, sizeof(e)), -1);
	cr_expect_str_eq(e, "'i' must be an integer (got \"7x\")");
	cr_expect_eq(conf_parse_value(&sample_keys[3], "0755", &s, e, sizeof(e)), 0);
	cr_expect_eq(s.mode, 0755);
	cr_expect_eq(conf_parse_value(&sample_keys[3], "01777", &s, e, sizeof(e)), -1);
	cr_expect_str_eq(e, "'mode' must be between 0 and 0777");
	cr_expect_eq(conf_parse_value(&sample_keys[4], "2M", &s, e, sizeof(e)), -1);
	cr_expect_str_eq(e, "'size' must be between 1K and 1M");
	cr_expect_eq(conf_parse_value(&sample_keys[5], "1000000d", &s, e, sizeof(e)), 0);
	cr_expect_eq(s.dur, 1000000LL * 86400000);
	cr_expect_eq(conf_parse_value(&sample_keys[6], "", &s, e, sizeof(e)), 0);
	cr_expect_eq(s.list.count, 0);
	conf_release(sample_keys, &s);
	cr_expect_null(s.s);
	cr_expect_null(s.list.items);
}

Test(config, conf_print_formats)
{
	struct sample s = { 0 };
	char e[256], *buf = NULL;
	size_t len = 0;
	FILE *out;

	cr_assert_eq(conf_defaults(sample_keys, &s, e, sizeof(e)), 0, "%s", e);
	free(s.s);
	s.s = strdup("q\"b\\s\tx\001");
	out = open_memstream(&buf, &len);
	conf_print(out, sample_keys, &s, 2);
	s.size = 3000;
	s.dur = 300000;
	s.i = 5000000000LL;
	conf_print(out, sample_keys, &s, 0);
	free(s.s);
	s.s = NULL;
	conf_print(out, sample_keys, &s, 0);
	fclose(out);
	cr_expect_str_eq(buf, "  s = \"q\\\"b\\\\s\\tx\\x01\";\n"
			      "  b = true;\n"
			      "  i = 7;\n"
			      "  mode = \"0640\";\n"
			      "  size = \"4K\";\n"
			      "  dur = \"1500ms\";\n"
			      "  list = [ \"a\", \"b\", \"c\" ];\n"
			      "s = \"q\\\"b\\\\s\\tx\\x01\";\n"
			      "b = true;\n"
			      "i = 5000000000L;\n"
			      "mode = \"0640\";\n"
			      "size = 3000;\n"
			      "dur = \"300s\";\n"
			      "list = [ \"a\", \"b\", \"c\" ];\n"
			      "# s is not set\n"
			      "b = true;\n"
			      "i = 5000000000L;\n"
			      "mode = \"0640\";\n"
			      "size = 3000;\n"
			      "dur = \"300s\";\n"
			      "list = [ \"a\", \"b\", \"c\" ];\n");
	free(buf);
	conf_release(sample_keys, &s);
}

/* Every key is documented, named once, and its default parses (the -n output and the docs
 * check rely on the tables). */
static void check_table(const struct conf_key *keys, size_t settings_size, const char *what)
{
	char e[256];
	void *base = calloc(1, settings_size > 0 ? settings_size : 1);

	for (const struct conf_key *k = keys; k->name != NULL; k++) {
		cr_expect(k->doc != NULL && k->doc[0] != '\0', "%s: '%s' has no doc", what,
			  k->name);
		cr_expect(k->doc == NULL || strchr(k->doc, '\n') == NULL, "%s: '%s' doc is not one line",
			  what, k->name);
		for (const struct conf_key *o = keys; o < k; o++)
			cr_expect_str_neq(o->name, k->name, "%s: '%s' twice", what, k->name);
	}
	cr_expect_eq(conf_defaults(keys, base, e, sizeof(e)), 0, "%s: %s", what, e);
	conf_release(keys, base);
	free(base);
}

Test(config, every_table_documented_with_parsing_defaults)
{
	check_table(config_global_keys, sizeof(struct config), "global");
	check_table(config_route_keys, sizeof(struct config_route), "route");
	check_table(backend_common_keys, sizeof(struct backend_common), "backend");
	for (size_t i = 0; backend_drivers[i] != NULL; i++)
		check_table(backend_drivers[i]->keys, backend_drivers[i]->settings_size,
			    backend_drivers[i]->name);
	/* every field of struct config before the backends has a key */
	size_t n = 0;
	for (const struct conf_key *k = config_global_keys; k->name != NULL; k++)
		n++;
	cr_expect_eq(n, 42, "a global key was added or removed: update struct config, docs and this count");
}

/* --- loading ------------------------------------------------------------------------------- */

Test(config, minimal_config_and_defaults)
{
	struct config *cfg = load_text(BACKEND_SINK ROUTE_ALL);

	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->refcount, 1);
	cr_expect_str_eq(cfg->path, conf_path);
	cr_expect(cfg->hostname != NULL && cfg->hostname[0] != '\0');
	cr_assert_eq(cfg->listen.count, 1);
	cr_expect_str_eq(cfg->listen.items[0], "127.0.0.1:2424");
	cr_expect_null(cfg->unix_socket_owner);
	cr_expect_null(cfg->unix_socket_group);
	cr_expect_eq(cfg->unix_socket_mode, 0660);
	cr_expect_eq(cfg->max_connections, 1000);
	cr_expect_eq(cfg->max_message_size, 50LL * 1024 * 1024);
	cr_expect_eq(cfg->max_recipients, 1000);
	cr_expect_eq(cfg->max_command_line, 2048);
	cr_expect_eq(cfg->max_errors, 20);
	cr_expect_eq(cfg->max_received_headers, 100);
	cr_expect_eq(cfg->timeout_greeting_ms, 300000);
	cr_expect_eq(cfg->timeout_command_ms, 300000);
	cr_expect_eq(cfg->timeout_data_ms, 180000);
	cr_expect_eq(cfg->min_data_rate, 500);
	cr_expect_eq(cfg->max_connections_per_client, 100);
	cr_expect_eq(cfg->trusted_networks.count, 0);
	cr_expect_eq(cfg->trusted_count, 0);
	cr_expect_eq(cfg->spool_memory_max, 1024 * 1024);
	cr_expect_str_eq(cfg->spool_dir, "/tmp");
	cr_expect_str_eq(cfg->subaddress_separator, "+");
	cr_expect(cfg->lowercase_local_part);
	cr_expect(!cfg->delivered_to);
	cr_expect(!cfg->soft_bounce);
	cr_expect_eq(cfg->log_level, LOG_LEVEL_INFO);
	cr_expect_str_eq(config_syslog_facilities[cfg->syslog_facility], "auto");
	cr_expect_eq(cfg->log_format, CONFIG_LOG_TEXT);
	cr_expect_null(cfg->user);
	cr_expect_null(cfg->group);

	cr_assert_eq(cfg->backend_count, 1);
	cr_expect_str_eq(cfg->backends[0].name, "sink");
	cr_expect_eq(cfg->backends[0].driver, &backend_discard);
	cr_expect_str_eq(cfg->backends[0].common.driver, "discard");
	cr_expect_eq(cfg->backends[0].common.concurrency, 8);
	cr_expect(!cfg->backends[0].common.soft_bounce);
	cr_expect_eq(cfg->backends[0].line, 1); /* for messages of runtime_open() */
	cr_expect_eq(config_backend_index(cfg, "sink"), 0);
	cr_expect_eq(config_backend_index(cfg, "nope"), -1);

	cr_assert_eq(cfg->route_count, 1);
	cr_expect_str_eq(cfg->routes[0].match, "*");
	cr_assert_eq(cfg->routes[0].deliver.count, 1);
	cr_expect_str_eq(cfg->routes[0].deliver.items[0], "sink");
	cr_assert_not_null(cfg->router);
	cr_expect_eq(router_rule_count(cfg->router), 1);
	config_unref(&cfg);
	cr_expect_null(cfg);
}

Test(config, values_of_every_type)
{
	struct config *cfg = load_text(
		"hostname = \"mx.example.test\";\n"
		"listen = [ \"unix:/run/lmtpgw/lmtp.sock\", \"[::1]:2424\" ];\n"
		"unix_socket_group = \"postfix\";\n"
		"unix_socket_mode = \"0600\";\n"
		"max_connections = 0x10;\n"
		"max_message_size = \"25M\";\n"
		"spool_memory_max = 65536;\n"
		"max_recipients = \"500\";\n"
		"timeout_greeting = 30;\n"
		"timeout_command = \"500ms\";\n"
		"timeout_data = \"1h\";\n"
		"lowercase_local_part = false;\n"
		"delivered_to = true;\n"
		"subaddress_separator = \"+-\";\n"
		"log_level = \"debug\";\n"
		"syslog_facility = \"local3\";\n"
		"backends: {\n"
		"  a: { driver = \"discard\"; concurrency = 2; soft_bounce = true; };\n"
		"  b-2: { driver = \"DISCARD\"; };\n"
		"};\n"
		"routes = (\n"
		"  { match = \"*@example.test\"; deliver = [ \"a\", \"b-2\" ]; },\n"
		"  { match = \"@other.test\"; deliver = \"b-2\"; }\n"
		");\n");

	cr_assert_not_null(cfg, "%s", err);
	cr_expect_str_eq(cfg->hostname, "mx.example.test");
	cr_assert_eq(cfg->listen.count, 2);
	cr_expect_str_eq(cfg->listen.items[1], "[::1]:2424");
	cr_expect_str_eq(cfg->unix_socket_group, "postfix");
	cr_expect_eq(cfg->unix_socket_mode, 0600);
	cr_expect_eq(cfg->max_connections, 16);
	cr_expect_eq(cfg->max_message_size, 25LL * 1024 * 1024);
	cr_expect_eq(cfg->spool_memory_max, 65536);
	cr_expect_eq(cfg->max_recipients, 500);
	cr_expect_eq(cfg->timeout_greeting_ms, 30000);
	cr_expect_eq(cfg->timeout_command_ms, 500);
	cr_expect_eq(cfg->timeout_data_ms, 3600000);
	cr_expect(!cfg->lowercase_local_part);
	cr_expect(cfg->delivered_to);
	cr_expect_str_eq(cfg->subaddress_separator, "+-");
	cr_expect_eq(cfg->log_level, LOG_LEVEL_DEBUG);
	cr_expect_str_eq(config_syslog_facilities[cfg->syslog_facility], "local3");
	cr_assert_eq(cfg->backend_count, 2);
	cr_expect_eq(cfg->backends[0].common.concurrency, 2);
	cr_expect(cfg->backends[0].common.soft_bounce);
	cr_expect_eq(cfg->backends[1].driver, &backend_discard);
	cr_assert_eq(cfg->route_count, 2);
	cr_assert_eq(cfg->routes[0].deliver.count, 2);
	cr_expect_str_eq(cfg->routes[0].deliver.items[1], "b-2");
	cr_assert_eq(cfg->routes[1].deliver.count, 1);
	cr_expect_eq(router_rule_count(cfg->router), 2);

	/* refcounting: the last unref frees */
	struct config *ref = config_ref(cfg);
	cr_expect_eq(ref, cfg);
	cr_expect_eq(cfg->refcount, 2);
	config_unref(&ref);
	cr_expect_null(ref);
	cr_expect_eq(cfg->refcount, 1);
	config_unref(&cfg);
}

Test(config, include_is_relative_to_the_config_file)
{
	char inc[128];

	snprintf(inc, sizeof(inc), "%s/backends.inc", tmpdir);
	write_file(inc, BACKEND_SINK);
	struct config *cfg = load_text("@include \"backends.inc\"\n" ROUTE_ALL);

	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->backend_count, 1);
	config_unref(&cfg);
}

/* --- errors: each class with its file:line message ----------------------------------------- */

Test(config, error_missing_file)
{
	char want[256];

	snprintf(conf_path, sizeof(conf_path), "%s/absent.conf", tmpdir);
	cr_assert_null(config_load(conf_path, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s: cannot read: No such file or directory", conf_path);
	cr_expect_str_eq(err, want);
}

Test(config, error_syntax)
{
	expect_error("hostname = \"x\";\nmax_errors = ;\n" BACKEND_SINK ROUTE_ALL, 2,
		     "syntax error");
}

Test(config, error_unknown_keys)
{
	expect_error("hostname = \"x\";\nbogus = 1;\n" BACKEND_SINK ROUTE_ALL, 2,
		     "unknown key 'bogus' in the global section");
	expect_error("backends: {\n  sink: {\n    driver = \"discard\";\n    path = \"x\";\n  };\n};\n"
		     ROUTE_ALL, 4, "unknown key 'path' in backend 'sink'");
	expect_error(BACKEND_SINK "routes = (\n  { match = \"*\"; deliver = \"sink\";\n"
		     "    to = \"x\"; }\n);\n", 4, "unknown key 'to' in route 1");
}

Test(config, error_wrong_types)
{
	expect_error("\nhostname = 5;\n" BACKEND_SINK ROUTE_ALL, 2, "'hostname' must be a string");
	expect_error("delivered_to = \"yes\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'delivered_to' must be true or false");
	expect_error("max_errors = 2.5;\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'max_errors' must be an integer");
	expect_error("max_errors = \"lots\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'max_errors' must be an integer (got \"lots\")");
	expect_error("listen = [ 2424 ];\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'listen' must be a string or a list of strings");
	expect_error("max_message_size = true;\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'max_message_size' must be a size: bytes, or a string such as \"512K\", "
		     "\"25M\", \"2G\"");
	expect_error("timeout_data = -1;\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'timeout_data' must be a duration: seconds, or a string such as \"500ms\", "
		     "\"30s\", \"5m\", \"1h\"");
	expect_error("backends: { sink: { driver = \"discard\"; soft_bounce = 1; }; };\n" ROUTE_ALL,
		     1, "backend 'sink': 'soft_bounce' must be true or false");
	expect_error(BACKEND_SINK "routes = ( { match = 1; deliver = \"sink\"; } );\n", 2,
		     "route 1: 'match' must be a string");
}

Test(config, error_bare_octal_mode)
{
	/* libconfig reads 0660 as decimal 660: refuse rather than set mode 01224 */
	expect_error("unix_socket_mode = 0660;\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'unix_socket_mode' must be an octal string such as \"0660\" (libconfig reads "
		     "a bare 0660 as decimal 660)");
}

Test(config, error_out_of_bounds)
{
	expect_error("max_recipients = 0;\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'max_recipients' must be between 1 and 100000");
	expect_error("max_command_line = 100;\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'max_command_line' must be between 512 and 65536");
	expect_error("max_message_size = \"2T\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'max_message_size' must be a size: bytes, or a string such as \"512K\", "
		     "\"25M\", \"2G\" (got \"2T\")");
	expect_error("max_message_size = \"2000G\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'max_message_size' must be between 1K and 1024G");
	expect_error("timeout_command = \"50ms\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'timeout_command' must be between 100ms and 1d");
	expect_error("unix_socket_mode = \"01777\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'unix_socket_mode' must be between 0 and 0777");
	expect_error("backends: { sink: { driver = \"discard\";\n concurrency = 0; }; };\n"
		     ROUTE_ALL, 2, "backend 'sink': 'concurrency' must be between 1 and 256");
}

Test(config, error_bad_size_suffix)
{
	expect_error("\n\nspool_memory_max = \"25Q\";\n" BACKEND_SINK ROUTE_ALL, 3,
		     "'spool_memory_max' must be a size: bytes, or a string such as \"512K\", "
		     "\"25M\", \"2G\" (got \"25Q\")");
}

Test(config, error_bad_duration)
{
	expect_error("timeout_data = \"5x\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'timeout_data' must be a duration: seconds, or a string such as \"500ms\", "
		     "\"30s\", \"5m\", \"1h\" (got \"5x\")");
}

Test(config, error_invalid_enumerations)
{
	expect_error("log_level = \"verbose\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'log_level' must be one of: error, warn, info, debug (got \"verbose\")");
	expect_error("syslog_facility = \"kern\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'syslog_facility' must be one of: auto, mail, daemon, user, local0, local1, local2, "
		     "local3, local4, local5, local6, local7 (got \"kern\")");
	expect_error("hostname = \"\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'hostname' must not be empty");
	expect_error("subaddress_separator = \"\";\n" BACKEND_SINK ROUTE_ALL, 1,
		     "'subaddress_separator' must not be empty");
}

Test(config, error_backends)
{
	expect_error("backends: {\n  sink: {\n    driver = \"pigeon\";\n  };\n};\n" ROUTE_ALL, 3,
		     "backend 'sink': unknown driver 'pigeon' (known: maildir, discard, imap, s3, webhook)");
	expect_error("backends: {\n  sink: { concurrency = 2; };\n};\n" ROUTE_ALL, 2,
		     "backend 'sink': 'driver' is required (known: maildir, discard, imap, s3, webhook)");
	expect_error("backends: { sink: { driver = [\"discard\"]; }; };\n" ROUTE_ALL, 1,
		     "backend 'sink': 'driver' must be a string (known: maildir, discard, imap, s3, webhook)");
	expect_error("backends: { s*nk: { driver = \"discard\"; }; };\n" ROUTE_ALL, 1,
		     "backend name 's*nk' may only use letters, digits, '_' and '-'");
	expect_error("backends: { sink = 1; };\n" ROUTE_ALL, 1,
		     "backend 'sink' must be a group: sink: { driver = \"...\"; ... };");
	expect_error("hostname = \"x\";\n" ROUTE_ALL, 0,
		     "no backends: define at least one, e.g. backends: { local: { driver = "
		     "\"maildir\"; path = \"...\"; }; };");
	expect_error("backends: { };\n" ROUTE_ALL, 1,
		     "'backends' is empty: define at least one backend");
	expect_error("backends = ( 1 );\n" ROUTE_ALL, 1,
		     "'backends' must be a group: backends: { NAME: { driver = \"...\"; ... }; };");
}

Test(config, error_routes)
{
	expect_error(BACKEND_SINK "routes = (\n  { match = \"*\";\n    deliver = [ \"sink\", \"inbox\" ]; }\n);\n",
		     4, "route 1: unknown backend 'inbox' (defined: sink)");
	expect_error(BACKEND_SINK "routes = (\n  { match = \"*\"; deliver = \"sink\"; },\n"
		     "  { match = \"x@y\"; deliver = [ \"sink\", \"sink\" ]; }\n);\n",
		     4, "route 2: backend 'sink' is listed twice");
	expect_error(BACKEND_SINK, 0,
		     "no routes: define at least one, e.g. routes = ( { match = \"*@example.test\"; "
		     "deliver = [ \"local\" ]; } );");
	expect_error(BACKEND_SINK "routes = ( );\n", 2,
		     "'routes' is empty: define at least one route");
	expect_error(BACKEND_SINK "routes = { a = 1; };\n", 2,
		     "'routes' must be a list: routes = ( { match = \"...\"; deliver = [ ... ]; }, "
		     "... );");
	expect_error(BACKEND_SINK "routes = ( \"*\" );\n", 2,
		     "route 1 must be a group: { match = \"...\"; deliver = [ ... ]; }");
	expect_error(BACKEND_SINK "routes = ( { deliver = \"sink\"; } );\n", 2,
		     "route 1: 'match' is required");
	expect_error(BACKEND_SINK "routes = ( { match = \"*\"; } );\n", 2,
		     "route 1: 'deliver' must name at least one backend");
	expect_error(BACKEND_SINK "routes = ( { match = \"*\"; deliver = [ ]; } );\n", 2,
		     "route 1: 'deliver' must name at least one backend");
}

#define BACKENDS_FOUR "backends: { sink: { driver = \"discard\"; }; hook: { driver = \"discard\"; };\n" \
	"  arch: { driver = \"discard\"; }; quar: { driver = \"discard\"; }; };\n"

/* Route targets: plain names are required without fallback; groups give the role and the
 * fallback; the router holds both. */
Test(config, route_target_roles_and_fallback)
{
	struct config *cfg = load_text(BACKENDS_FOUR
		"routes = (\n"
		"  { match = \"*\"; deliver = ( \"sink\", { backend = \"hook\"; required = false; },\n"
		"      { backend = \"arch\"; fallback = \"quar\"; } ); }\n"
		");\n");

	cr_assert_not_null(cfg, "%s", err);
	const struct config_route *r = &cfg->routes[0];
	cr_assert_eq(r->deliver.count, 3);
	cr_expect_str_eq(r->deliver.items[1], "hook");
	cr_expect(r->targets[0].required && r->targets[0].fallback == -1);
	cr_expect(!r->targets[1].required && r->targets[1].fallback == -1);
	cr_expect(r->targets[2].required);
	cr_expect_eq(r->targets[2].fallback, config_backend_index(cfg, "quar"));
	const struct route_rule *rule = router_match(cfg->router, "a@b.test", NULL);
	cr_assert_not_null(rule);
	cr_expect_eq(rule->targets[2].backend, (unsigned)config_backend_index(cfg, "arch"));
	cr_expect_eq(rule->targets[2].fallback, config_backend_index(cfg, "quar"));
	cr_expect(!rule->targets[1].required);

	/* printed as a list with groups, and it reads back to the same */
	char *first = print_to_string(cfg);
	cr_expect(strstr(first, "\n    deliver = ( \"sink\", { backend = \"hook\"; required = false; }, "
			 "{ backend = \"arch\"; required = true; fallback = \"quar\"; } );\n") != NULL,
		  "%s", first);
	struct config *again = load_text(first);
	cr_assert_not_null(again, "%s\n--- printed:\n%s", err, first);
	char *second = print_to_string(again);
	cr_expect_str_eq(strchr(first, '\n'), strchr(second, '\n'));
	free(first);
	free(second);
	config_unref(&again);
	config_unref(&cfg);

	/* a best-effort target with a fallback of its own is fine beside a required one; an
	 * array of names stays an array */
	cfg = load_text(BACKENDS_FOUR "routes = ( { match = \"*\"; deliver = ( \"sink\", { backend = "
			"\"arch\"; required = false; fallback = \"quar\"; } ); },\n"
			"  { match = \"x@y.test\"; deliver = [ \"sink\", \"hook\" ]; } );\n");
	cr_assert_not_null(cfg, "%s", err);
	first = print_to_string(cfg);
	cr_expect(strstr(first, "\n    deliver = [ \"sink\", \"hook\" ];\n") != NULL, "%s", first);
	free(first);
	config_unref(&cfg);
}

Test(config, error_route_targets)
{
	/* every target best-effort: a 250 could be given with nothing stored */
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\";\n    deliver = ( { backend = "
		     "\"hook\"; required = false; } ); }\n);\n", 5,
		     "route 1: no required target: at least one target of a route must be required, "
		     "or a 250 could be given with nothing stored");
	/* an unknown fallback, at the line of its target */
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = ( \"sink\",\n"
		     "    { backend = \"arch\"; fallback = \"nosuch\"; } ); }\n);\n", 5,
		     "route 1: unknown fallback backend 'nosuch' of 'arch' (defined: sink, hook, "
		     "arch, quar)");
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = ( { backend = \"arch\"; "
		     "fallback = \"arch\"; } ); }\n);\n", 4,
		     "route 1: 'arch' cannot be its own fallback");
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = ( \"quar\", { backend = "
		     "\"arch\"; fallback = \"quar\"; } ); }\n);\n", 4,
		     "route 1: fallback 'quar' of 'arch' is also a target of this route (it would "
		     "store the message twice)");
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = ( { backend = \"arch\"; "
		     "fallback = \"quar\"; },\n    { backend = \"hook\"; fallback = \"quar\"; } ); }\n);\n",
		     5, "route 1: 'quar' is the fallback of both 'arch' and 'hook' (it would store the "
		     "message twice)");
	/* fallbacks do not chain: one backend name, not a list */
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = ( { backend = \"arch\";\n"
		     "    fallback = [ \"quar\", \"hook\" ]; } ); }\n);\n", 5,
		     "route 1, target 1: 'fallback' must be a string");
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = ( { required = true; } "
		     "); }\n);\n", 4, "route 1, target 1: 'backend' is required in a target group");
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = ( { backend = \"sink\";\n"
		     "    fallbak = \"quar\"; } ); }\n);\n", 5,
		     "unknown key 'fallbak' in route 1, target 1");
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = ( \"sink\", 7 ); }\n);\n",
		     4, "route 1, target 2: a target is a backend name or a group { backend = \"name\"; "
		     "required = false; fallback = \"name\"; } (a list with groups is written with ( ), "
		     "not [ ])");
	expect_error(BACKENDS_FOUR "routes = (\n  { match = \"*\"; deliver = 7; }\n);\n", 4,
		     "route 1: 'deliver' must be a backend name or a list: ( \"name\", { backend = "
		     "\"name\"; required = false; fallback = \"name\"; }, ... )");
}

/* --- config_print -> config_load ----------------------------------------------------------- */

Test(config, print_reads_back_identically)
{
	struct config *cfg = load_text(
		"hostname = \"mx \\\"quoted\\\" \\\\ host\";\n"
		"listen = [ \"unix:/run/x.sock\", \"127.0.0.1:2525\" ];\n"
		"unix_socket_mode = \"0600\";\n"
		"user = \"lmtpgw\";\n"
		"max_message_size = 3000000000L;\n"
		"spool_memory_max = \"512K\";\n"
		"timeout_command = \"1500ms\";\n"
		"timeout_data = \"2h\";\n"
		"soft_bounce = true;\n"
		"backends: {\n"
		"  a: { driver = \"discard\"; concurrency = 3; };\n"
		"  b: { driver = \"discard\"; soft_bounce = true; };\n"
		"};\n"
		"routes = (\n"
		"  { match = \"/^tickets\\\\+.*@x\\\\.test$/\"; deliver = [ \"b\", \"a\" ]; },\n"
		"  { match = \"*\"; deliver = \"a\"; }\n"
		");\n");
	char *first, *second, path2[128];
	struct config *again;

	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->max_message_size, 3000000000LL);
	cr_expect_str_eq(cfg->hostname, "mx \"quoted\" \\ host");
	cr_expect_str_eq(cfg->routes[0].match, "/^tickets\\+.*@x\\.test$/");
	first = print_to_string(cfg);
	cr_expect(strstr(first, "\nmax_message_size = \"3000000000\";\n") != NULL, "%s", first);
	cr_expect(strstr(first, "\nspool_memory_max = \"512K\";\n") != NULL, "%s", first);
	cr_expect(strstr(first, "\ntimeout_data = \"7200s\";\n") != NULL, "%s", first);
	cr_expect(strstr(first, "\nunix_socket_mode = \"0600\";\n") != NULL, "%s", first);
	cr_expect(strstr(first, "\n# group is not set\n") != NULL, "%s", first);

	snprintf(path2, sizeof(path2), "%s/printed.conf", tmpdir);
	write_file(path2, first);
	again = config_load(path2, err, sizeof(err));
	cr_assert_not_null(again, "%s\n--- printed:\n%s", err, first);
	second = print_to_string(again);
	/* identical apart from the first line, which names the source file */
	cr_expect_str_eq(strchr(first, '\n'), strchr(second, '\n'));
	cr_expect_eq(again->backend_count, 2);
	cr_expect_eq(again->route_count, 2);
	cr_expect_eq(again->backends[0].common.concurrency, 3);
	cr_expect_eq(again->timeout_command_ms, 1500);
	free(first);
	free(second);
	config_unref(&again);
	config_unref(&cfg);
}

Test(config, print_of_defaults_reads_back)
{
	struct config *cfg = load_text(BACKEND_SINK ROUTE_ALL);
	char *first, *second;
	struct config *again;

	cr_assert_not_null(cfg, "%s", err);
	first = print_to_string(cfg);
	cr_expect(strstr(first, "\nmax_message_size = \"50M\";\n") != NULL, "%s", first);
	cr_expect(strstr(first, "\ntimeout_greeting = \"300s\";\n") != NULL, "%s", first);
	cr_expect(strstr(first, "\nlisten = [ \"127.0.0.1:2424\" ];\n") != NULL, "%s", first);
	cr_expect(strstr(first, "\nbackends: {\n  sink: {\n    driver = \"discard\";\n") != NULL,
		  "%s", first);
	again = load_text(first);
	cr_assert_not_null(again, "%s\n--- printed:\n%s", err, first);
	second = print_to_string(again);
	cr_expect_str_eq(first, second);
	free(first);
	free(second);
	config_unref(&again);
	config_unref(&cfg);
}

Test(config, error_router_refuses_pattern)
{
	/* the router's own message, at the line of match */
	expect_error(BACKEND_SINK "routes = (\n  { deliver = \"sink\";\n    match = \"\"; }\n);\n", 4,
		     "route 1: empty route pattern");
}

/* The shipped default (conf/lmtpgw.conf, found from this file's path) loads and reads back. */
Test(config, shipped_default_config_loads)
{
	char path[PATH_MAX], *first, *second;
	const char *slash = strrchr(__FILE__, '/');
	struct config *cfg, *again;

	snprintf(path, sizeof(path), "%.*s/../../conf/lmtpgw.conf",
		 slash != NULL ? (int)(slash - __FILE__) : 1, slash != NULL ? __FILE__ : ".");
	if (access(path, R_OK) < 0)
		cr_skip_test("%s not found from the current directory", path);
	cfg = config_load(path, err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->backend_count, 1);
	cr_expect_str_eq(cfg->backends[0].name, "local");
	cr_expect_str_eq(cfg->backends[0].driver->name, "maildir");
	cr_expect_eq(cfg->route_count, 2);
	cr_expect_str_eq(cfg->listen.items[0], "127.0.0.1:2424");
	first = print_to_string(cfg);
	again = load_text(first);
	cr_assert_not_null(again, "%s\n--- printed:\n%s", err, first);
	second = print_to_string(again);
	cr_expect_str_eq(strchr(first, '\n'), strchr(second, '\n'));
	free(first);
	free(second);
	config_unref(&again);
	config_unref(&cfg);
}

Test(config, trusted_networks_parsed_and_checked)
{
	struct config *cfg = load_text("trusted_networks = [ \"192.0.2.0/24\", \"::1\" ];\n"
				       "max_connections_per_client = 0;\nmin_data_rate = 0;\n"
				       BACKEND_SINK ROUTE_ALL);

	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->trusted_count, 2);
	cr_expect_eq(cfg->max_connections_per_client, 0);
	cr_expect_eq(cfg->min_data_rate, 0);
	config_unref(&cfg);
	expect_error("\ntrusted_networks = [ \"192.0.2.0/33\" ];\n" BACKEND_SINK ROUTE_ALL, 2,
		     "'trusted_networks': \"192.0.2.0/33\" is not an address or network "
		     "(e.g. \"10.0.0.0/8\", \"::1\")");
}
