/*
 * reply - the policy every final refusal of mail passes through (see include/reply.h).
 *
 * Owns: nothing; works on the caller's status. Reads the configuration only.
 */
#include "reply.h"

#include <string.h>

#include "backend.h"
#include "config.h"
#include "status.h"

void reply_policy_final(const struct config *cfg, const struct backend_instance *backend,
			struct status *st)
{
	if (status_class_of(st) != STATUS_PERMFAIL || st->kind == STATUS_KIND_PROTOCOL)
		return;
	if (cfg->soft_bounce || (backend != NULL && backend->common.soft_bounce))
		status_soft_bounce(st);
}

void reply_for_recipient(const struct config *cfg, const struct backend_instance *backend,
			 const char *rcpt, const char *txid, struct status *st)
{
	struct status out;
	/* "<" rcpt "> " text " [" txid "]": what is left of the text buffer for the text. */
	size_t fixed = strlen(rcpt) + 3 + (txid != NULL ? strlen(txid) + 3 : 0);
	int room = fixed < sizeof(out.text) - 1 ? (int)(sizeof(out.text) - 1 - fixed) : 0;

	reply_policy_final(cfg, backend, st);
	if (status_make(&out, st->code, st->enhanced, "<%s> %.*s%s%s%s", rcpt, room, st->text,
			txid != NULL ? " [" : "", txid != NULL ? txid : "",
			txid != NULL ? "]" : "") < 0)
		return; /* st is valid (it was built by status_make): keep it as it is */
	out.kind = st->kind;
	*st = out;
}
