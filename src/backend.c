/*
 * backend - the registry of drivers, the keys every backend block has, and helpers every
 * driver shares (trace prefix, template variables).
 */
#include "backend.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "format.h"

extern const struct backend_driver backend_maildir;
extern const struct backend_driver backend_discard;
extern const struct backend_driver backend_imap;
extern const struct backend_driver backend_s3;
extern const struct backend_driver backend_webhook;

/* Adding a driver: define it in src/backends/NAME.c and list it here. */
const struct backend_driver *const backend_drivers[] = {
	&backend_maildir,
	&backend_discard,
	&backend_imap,
	&backend_s3,
	&backend_webhook,
	NULL,
};

const struct conf_key backend_common_keys[] = {
	{ "driver", CONF_STRING, offsetof(struct backend_common, driver), NULL, 1, 0,
	  "driver of this backend: maildir, imap, s3, webhook, discard" },
	{ "concurrency", CONF_INT, offsetof(struct backend_common, concurrency), "8", 1, 256,
	  "deliveries of this backend running at once (worker threads)" },
	{ "soft_bounce", CONF_BOOL, offsetof(struct backend_common, soft_bounce), "false", 1, 0,
	  "turn every 5xx of this backend into the matching 4xx" },
	{ "breaker_failures", CONF_INT, offsetof(struct backend_common, breaker_failures), "5", 0,
	  100000, "consecutive connection-level failures after which the backend is taken as down "
	  "(0: never)" },
	{ "breaker_cooloff", CONF_DURATION, offsetof(struct backend_common, breaker_cooloff_ms),
	  "30s", 1000, 3600000, "how long a down backend gets 451 4.4.1 at RCPT before it is tried "
	  "again" },
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

const struct backend_driver *backend_driver_find(const char *name)
{
	for (size_t i = 0; backend_drivers[i] != NULL; i++) {
		if (strcasecmp(backend_drivers[i]->name, name) == 0)
			return backend_drivers[i];
	}
	return NULL;
}

size_t delivery_prefix(const struct delivery *delivery, const struct target *target, char *buf,
		       size_t size)
{
	int n;

	if (delivery->delivered_to)
		n = format(buf, size, "Delivered-To: %s\r\n%.*s", target->rcpt->rcpt,
			     (int)delivery->trace_len, delivery->trace);
	else
		n = format(buf, size, "%.*s", (int)delivery->trace_len, delivery->trace);
	return n < 0 ? 0 : (size_t)n;
}

static void fail_target(struct target *t, bool first, const struct status *st, const char *ref)
{
	t->status = *st;
	if (ref != NULL)
		format(t->ref, sizeof(t->ref), "%s", ref);
	t->same_failure = !first;
}

void backend_fail_targets(struct target *targets, size_t count, const struct status *st,
			  const char *ref)
{
	for (size_t i = 0; i < count; i++)
		fail_target(&targets[i], i == 0, st, ref);
}

void backend_fail_group(struct target *const *group, size_t count, const struct status *st,
			const char *ref)
{
	for (size_t i = 0; i < count; i++)
		fail_target(group[i], i == 0, st, ref);
}

void delivery_vars(const struct delivery *delivery, const struct recipient *rcpt,
		   struct template_vars *vars_r)
{
	memset(vars_r, 0, sizeof(*vars_r));
	vars_r->local = rcpt->local;
	vars_r->detail = rcpt->detail;
	vars_r->user = rcpt->user;
	vars_r->domain = rcpt->domain;
	vars_r->rcpt = rcpt->rcpt;
	vars_r->sender = delivery->sender;
	vars_r->sha256 = delivery->sha256;
	vars_r->msgid = delivery->msgid;
	vars_r->session = delivery->session_id;
	vars_r->txid = delivery->txid;
	vars_r->received = delivery->received;
}
