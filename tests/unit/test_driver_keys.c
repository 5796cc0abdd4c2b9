/* The enum keys of the drivers' key tables (webhook format/mode; s3 addressing, mode, sse,
 * object_lock_mode; imap login_mode, master_format): another word is refused when the
 * configuration is read, naming the allowed ones (conftable's CONF_ENUM), and the defaults are
 * the documented words. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

/* The driver's settings filled with its defaults; free with settings_free(). */
static void *settings_new(const struct backend_driver **d_r, const char *driver)
{
	const struct backend_driver *d = backend_driver_find(driver);
	char e[256];

	cr_assert_not_null(d, "no driver %s", driver);
	void *set = calloc(1, d->settings_size);
	cr_assert_not_null(set);
	cr_assert_eq(conf_defaults(d->keys, set, e, sizeof(e)), 0, "%s", e);
	*d_r = d;
	return set;
}

static void settings_free(const struct backend_driver *d, void *set)
{
	conf_release(d->keys, set);
	free(set);
}

/* An enum key, a word it refuses and the start of the message; or (message NULL) a word that
 * is its default. */
static const struct enum_case {
	const char *driver, *key, *word, *message;
} enum_cases[] = {
	{ "webhook", "format", "xml", "'format' must be one of: raw, json, json-parsed, multipart" },
	{ "webhook", "format", "JSON", "'format' must be one of" },
	{ "webhook", "mode", "batch", "'mode' must be one of: message, recipient" },
	{ "webhook", "format", "json", NULL },
	{ "webhook", "mode", "message", NULL },
	{ "s3", "sse", "DES", "'sse' must be one of: none, AES256, aws:kms" },
	{ "s3", "sse", "aes256", "'sse' must be one of" },
	{ "s3", "object_lock_mode", "governance",
	  "'object_lock_mode' must be one of: none, GOVERNANCE, COMPLIANCE" },
	{ "s3", "addressing", "host", "'addressing' must be one of: path, virtual" },
	{ "s3", "mode", "object", "'mode' must be one of: message, recipient" },
	{ "s3", "sse", "none", NULL },
	{ "s3", "object_lock_mode", "none", NULL },
	{ "s3", "addressing", "path", NULL },
	{ "s3", "mode", "message", NULL },
	{ "imap", "login_mode", "admin", "'login_mode' must be one of: master, user, shared" },
	{ "imap", "master_format", "proxy", "'master_format' must be one of: auto, sasl, dovecot" },
	{ "imap", "login_mode", "master", NULL },
	{ "imap", "master_format", "auto", NULL },
};

Test(driver_keys, enums)
{
	for (size_t i = 0; i < sizeof(enum_cases) / sizeof(enum_cases[0]); i++) {
		const struct enum_case *c = &enum_cases[i];
		const struct backend_driver *d;
		void *set = settings_new(&d, c->driver);
		const struct conf_key *k = conf_key_find(d->keys, c->key);
		char e[256];

		cr_assert_not_null(k, "%s: no key %s", c->driver, c->key);
		cr_assert_eq(k->type, CONF_ENUM, "%s: %s is not an enum key", c->driver, c->key);
		if (c->message == NULL) {
			cr_assert_str_eq(conf_enum_word(k, set), c->word, "%s %s", c->driver, c->key);
		} else {
			cr_assert_eq(conf_parse_value(k, c->word, set, e, sizeof(e)), -1, "%s = %s",
				     c->key, c->word);
			cr_assert(strstr(e, c->message) != NULL, "%s", e);
		}
		settings_free(d, set);
	}
}
