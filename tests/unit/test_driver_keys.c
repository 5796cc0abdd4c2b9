/* The enum keys of the drivers' key tables (webhook format/mode; s3 addressing, mode, sse,
 * object_lock_mode): another word is refused when the configuration is read, naming the
 * allowed ones (conftable's CONF_ENUM), and the defaults are the documented words. */
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

static void refused(const char *driver, const char *key, const char *word, const char *message)
{
	const struct backend_driver *d;
	void *set = settings_new(&d, driver);
	const struct conf_key *k = conf_key_find(d->keys, key);
	char e[256];

	cr_assert_not_null(k, "no key %s", key);
	cr_assert_eq(k->type, CONF_ENUM, "%s is not an enum key", key);
	cr_assert_eq(conf_parse_value(k, word, set, e, sizeof(e)), -1, "%s = %s", key, word);
	cr_assert(strstr(e, message) != NULL, "%s", e);
	settings_free(d, set);
}

static void defaults_to(const char *driver, const char *key, const char *word)
{
	const struct backend_driver *d;
	void *set = settings_new(&d, driver);

	cr_assert_str_eq(conf_enum_word(conf_key_find(d->keys, key), set), word, "%s", key);
	settings_free(d, set);
}

Test(driver_keys, webhook_enums)
{
	refused("webhook", "format", "xml",
		"'format' must be one of: raw, json, json-parsed, multipart");
	refused("webhook", "format", "JSON", "'format' must be one of");
	refused("webhook", "mode", "batch", "'mode' must be one of: message, recipient");
	defaults_to("webhook", "format", "json");
	defaults_to("webhook", "mode", "message");
}

Test(driver_keys, s3_enums)
{
	refused("s3", "sse", "DES", "'sse' must be one of: none, AES256, aws:kms");
	refused("s3", "sse", "aes256", "'sse' must be one of");
	refused("s3", "object_lock_mode", "governance",
		"'object_lock_mode' must be one of: none, GOVERNANCE, COMPLIANCE");
	refused("s3", "addressing", "host", "'addressing' must be one of: path, virtual");
	refused("s3", "mode", "object", "'mode' must be one of: message, recipient");
	defaults_to("s3", "sse", "none");
	defaults_to("s3", "object_lock_mode", "none");
	defaults_to("s3", "addressing", "path");
	defaults_to("s3", "mode", "message");
}
