/*
 * peers - open connections counted per client address, for max_connections_per_client.
 *
 * A small chained hash table keyed by the printable client address ("192.0.2.7", "::1",
 * "unix"), embedded in the server (no allocation until the first connection). An entry lives
 * while its client has a connection open. Loop thread only.
 *
 * Error contract: peers_add() returns false when it cannot allocate an entry; the connection
 * is then not counted, and its peers_remove() must not be called.
 */
#ifndef LMTPGW_PEERS_H
#define LMTPGW_PEERS_H

#include <stdbool.h>

#define PEERS_BUCKETS 256
#define PEERS_ADDR_MAX 64

struct peer_entry;

struct peers {
	struct peer_entry *buckets[PEERS_BUCKETS];
};

/* Connections open now from addr. */
unsigned peers_count(const struct peers *p, const char *addr);
/* One more connection from addr. */
bool peers_add(struct peers *p, const char *addr);
/* One connection from addr fewer (it was added). */
void peers_remove(struct peers *p, const char *addr);

#endif
