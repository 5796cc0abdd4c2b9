/*
 * reply_queue - post-DATA replies filled in any order, taken strictly in order (reply_queue.h).
 */
#include "reply_queue.h"

#include <stdlib.h>

int reply_queue_open(struct reply_queue *q, size_t count)
{
	/* One block: the slots, then their filled marks (bool needs no alignment beyond a byte). */
	struct status *slots = calloc(count, sizeof(*slots) + sizeof(bool));

	if (slots == NULL)
		return -1;
	q->slots = slots;
	q->filled = (bool *)(slots + count);
	q->count = count;
	q->next = 0;
	return 0;
}

void reply_queue_fill(struct reply_queue *q, size_t index, const struct status *st)
{
	q->slots[index] = *st;
	q->filled[index] = true;
}

const struct status *reply_queue_take(struct reply_queue *q)
{
	if (q->next >= q->count || !q->filled[q->next])
		return NULL;
	return &q->slots[q->next++];
}

void reply_queue_close(struct reply_queue *q)
{
	free(q->slots);
	q->slots = NULL;
	q->filled = NULL;
	q->count = q->next = 0;
}
