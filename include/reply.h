/*
 * reply - the policy every final refusal of mail passes through before it is sent.
 *
 * A final refusal is a reply that tells the client what became of a recipient or a message:
 * a recipient refused at RCPT (no route, a backend's verification, the circuit breaker, a
 * limit), a message refused at MAIL (SIZE=), at a BDAT chunk or at its end (too big, a loop, a
 * spool error), and each backend's verdict after the message. Each of those sites calls
 * reply_policy_final() and nothing else decides about soft bounce, so a new site cannot forget
 * it or apply it under a condition of its own (a BDAT chunk once kept its 552 this way).
 *
 * Protocol errors (500-504, a 501 for bad syntax, 555 for unknown parameters, 503 for a bad
 * sequence) are not refusals of mail and never pass here: soft bounce leaves them 5xx, as
 * Postfix's soft_bounce does for what the client got wrong.
 */
#ifndef LMTPGW_REPLY_H
#define LMTPGW_REPLY_H

#include <stddef.h>

struct backend_instance;
struct config;
struct status;

/* Apply the configured policy to a final refusal in place: with `soft_bounce` on globally, or on
 * the backend that answered (backend may be NULL when the refusal is the session's own), a
 * permanent reply becomes the matching temporary one (status_soft_bounce()). Success and
 * temporary replies pass unchanged. */
void reply_policy_final(const struct config *cfg, const struct backend_instance *backend,
			struct status *st);

/* Every final reply about one recipient is built here, from the bare status the session or a
 * driver gave: the policy above, then "<rcpt> " in front of its text and, once the message was
 * received, " [txid]" behind it (txid NULL at RCPT), so the MTA's log names both. A long text
 * is shortened to make room for them; only a recipient near the 256-octet path limit can cut
 * into the id (the code and enhanced code are never touched). */
void reply_for_recipient(const struct config *cfg, const struct backend_instance *backend,
			 const char *rcpt, const char *txid, struct status *st);

#endif
