/*
 * reply - the policy every final refusal of mail passes through (see include/reply.h).
 *
 * Owns: nothing; works on the caller's status. Reads the configuration only.
 */
#include "reply.h"

#include "backend.h"
#include "config.h"
#include "status.h"

void reply_policy_final(const struct config *cfg, const struct backend_instance *backend,
			struct status *st)
{
	if (status_class_of(st) != STATUS_PERMFAIL)
		return;
	if (cfg->soft_bounce || (backend != NULL && backend->common.soft_bounce))
		status_soft_bounce(st);
}
