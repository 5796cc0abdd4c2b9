/*
 * peers - open connections counted per client address (see include/peers.h).
 *
 * Owns: one entry per client address with a connection open, freed when its count drops to
 * zero, so the table holds at most max_connections entries.
 */
#include "peers.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct peer_entry {
	struct peer_entry *next;
	unsigned count;
	char addr[PEERS_ADDR_MAX];
};

/* FNV-1a: addresses are short, and an attacker choosing addresses to collide only slows the
 * lookups of its own bucket chain, bounded by max_connections. */
static unsigned bucket_of(const char *addr)
{
	uint32_t h = 2166136261u;

	for (const unsigned char *p = (const unsigned char *)addr; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % PEERS_BUCKETS;
}

static struct peer_entry **find(struct peers *p, const char *addr)
{
	struct peer_entry **e = &p->buckets[bucket_of(addr)];

	while (*e != NULL && strcmp((*e)->addr, addr) != 0)
		e = &(*e)->next;
	return e;
}

unsigned peers_count(const struct peers *p, const char *addr)
{
	const struct peer_entry *e = p->buckets[bucket_of(addr)];

	while (e != NULL && strcmp(e->addr, addr) != 0)
		e = e->next;
	return e != NULL ? e->count : 0;
}

bool peers_add(struct peers *p, const char *addr)
{
	size_t len = strlen(addr);

	if (len >= PEERS_ADDR_MAX)
		return false; /* cannot occur (INET6_ADDRSTRLEN is 46): not counted, never cut */
	struct peer_entry **e = find(p, addr);
	if (*e == NULL) {
		struct peer_entry *n = calloc(1, sizeof(*n));
		if (n == NULL)
			return false;
		memcpy(n->addr, addr, len + 1);
		*e = n;
	}
	(*e)->count++;
	return true;
}

void peers_remove(struct peers *p, const char *addr)
{
	struct peer_entry **e = find(p, addr);

	if (*e == NULL)
		return;
	if (--(*e)->count == 0) {
		struct peer_entry *gone = *e;
		*e = gone->next;
		free(gone);
	}
}
