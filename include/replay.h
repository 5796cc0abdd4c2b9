/*
 * replay - `lmtpgw replay`: re-deliver archived messages to a backend.
 *
 *   lmtpgw -c FILE replay --from BACKEND [--key K | --prefix P | --since T --until T]
 *                         --to BACKEND [--rcpt ADDR]... [--jobs N] [--dry-run]
 *
 * The source is an s3 backend (ListObjectsV2 and GET, signed like every request of the
 * driver, s3_client.h) or a maildir backend (the Maildir of each --rcpt, as the backend's path
 * template puts it). Each object's manifests (<key>.manifests/<id>.json) give the envelopes it
 * was delivered with: every envelope is delivered again, as one delivery, with the sender,
 * recipients, content digest, Message-ID and reception time of the original transaction, so
 * the target derives the same idempotency keys as it did then (webhook-id from the content
 * digest and the recipients, S3 key from %{sha256}, manifest envelope id): a consumer that has
 * the message already sees a duplicate id, and a replay interrupted and started again delivers
 * nothing twice. Without --rcpt only the recipients whose route names the target backend are
 * sent (the original request to it held only those); --rcpt replaces the manifests' recipients
 * (one delivery per object). --since/--until select envelopes by their manifest's
 * LastModified, not objects by their first PUT.
 *
 * Privileges are dropped as in the daemon (privileges_drop) before anything is read or
 * delivered. The target driver is called as the dispatcher would (a batch driver gets all
 * recipients of a request in one call), through dedupe_deliver (dedupe_db), from --jobs worker
 * threads. Progress goes to stderr when it is a terminal; failures are printed one line each;
 * a summary line ends the run. Exit status: 0 all delivered, 1 anything failed, 64 usage,
 * 77 privileges, 78 configuration.
 */
#ifndef LMTPGW_REPLAY_H
#define LMTPGW_REPLAY_H

struct runtime;

/* argv[0] is "replay"; the rest are its options. Returns the exit status. */
int replay_main(struct runtime *rt, int argc, char **argv);

#endif
