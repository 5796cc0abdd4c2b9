/*
 * reply_queue - the replies a transaction owes after its message, one per accepted recipient,
 * filled in any order and handed out strictly in order (RFC 2033 4.2 and 5).
 *
 * After the final dot (or BDAT LAST) an LMTP server owes one reply per accepted recipient, in
 * RCPT order. Backends finish when they finish: the dispatcher fills slot i whenever recipient
 * i's result is known, and the session takes replies from the front as soon as every slot
 * before them is filled, so each reply leaves as early as the order allows.
 *
 * Only post-DATA replies pass here: a command's own reply is sent as the command is handled,
 * and a RCPT whose verification runs in a worker holds the command pipeline instead, which
 * keeps those in order too.
 *
 * Owns: one block holding the slots and their filled marks, from reply_queue_open() to
 * reply_queue_close(). Errors: only reply_queue_open() can fail (no memory), and then the queue
 * is left closed. The queue is embedded in its owner (no allocation of its own struct).
 */
#ifndef LMTPGW_REPLY_QUEUE_H
#define LMTPGW_REPLY_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

struct reply_queue {
	struct status *slots;   /* count replies, in RCPT order */
	bool *filled;           /* filled[i]: slots[i] holds recipient i's reply */
	size_t count;           /* 0: closed (no transaction waits for replies) */
	size_t next;            /* the first reply not yet taken */
};

/* Open count empty slots (count > 0). Returns 0, or -1 when out of memory (q stays closed). */
int reply_queue_open(struct reply_queue *q, size_t count);

/* Fill slot index (< count) with st; a slot is filled once. */
void reply_queue_fill(struct reply_queue *q, size_t index, const struct status *st);

/* The next reply in order if its slot is filled (and take it), else NULL. */
const struct status *reply_queue_take(struct reply_queue *q);

/* Every reply has been taken: the transaction owes nothing more. */
static inline bool reply_queue_done(const struct reply_queue *q)
{
	return q->next == q->count;
}

/* Free the slots and close the queue (also when replies are still owed: the client is gone). */
void reply_queue_close(struct reply_queue *q);

#endif
