/*
 * discard - accepts every message and stores nothing. For benchmarks and for routes whose mail
 * is meant to vanish; every result says "discarded" so nobody mistakes it for storage.
 */
#include "backend.h"

#include <stdio.h>

#include "format.h"

static int discard_open(const void *settings, const char *instance_name, void **state_r,
			char *error_r, size_t error_size)
{
	*state_r = NULL;
	return 0;
}

static void discard_deliver(void *state, const struct delivery *delivery, struct target *targets,
			    size_t count)
{
	for (size_t i = 0; i < count; i++) {
		status_must(&targets[i].status, 250, "2.0.0", "discarded (not stored)");
		format(targets[i].ref, sizeof(targets[i].ref), "discarded");
	}
}

static void discard_close(void *state)
{
}

static bool discard_uses_sha256(void *state)
{
	return false;
}

static int discard_probe(void *state, char *result, size_t size)
{
	snprintf(result, size, "discards every message (nothing stored)");
	return 0;
}

static void discard_explain(void *state, const struct recipient *rcpt,
			    const struct template_vars *vars, char *buf, size_t size)
{
	snprintf(buf, size, "discarded (not stored)");
}

static const struct conf_key discard_keys[] = {
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

const struct backend_driver backend_discard = {
	.name = "discard",
	.keys = discard_keys,
	.settings_size = 0,
	.open = discard_open,
	.deliver = discard_deliver,
	.close = discard_close,
	.uses_sha256 = discard_uses_sha256,
	.probe = discard_probe,
	.explain = discard_explain,
	.inline_deliver = true,
	.batch = true,
};
