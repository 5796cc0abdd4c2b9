/*
 * s3_manifest - the envelope of every transaction that delivered an object, as a sidecar
 * "<key>.manifests/<envelope id>.json" (manifest.h builds the JSON).
 *
 * One manifest per envelope, not one per object. The same content reaches us in several
 * transactions (an MTA splits a message above its recipient limit, retries deferred
 * recipients later, adds always_bcc), and every recipient answered 250 must be named in a
 * manifest of the object. The manifest key derives from the envelope (content digest, sender,
 * recipient set: manifest_envelope_id()), so a later transaction with other recipients adds
 * its own manifest beside the first, and a retry of the same envelope gets 412 for the
 * manifest too: it is recorded already, ok. Manifests are PUT with If-None-Match: * and the
 * object's headers (Object Lock retention, legal hold, encryption, class, tags): write-once
 * like the object.
 */
#ifndef LMTPGW_S3_MANIFEST_H
#define LMTPGW_S3_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "manifest.h"
#include "s3_client.h"

/* This envelope's id into id and "<key>.manifests/<id>.json" into mkey (S3_KEY_MAX + 1
 * bytes), checked like an object key. 0, or -1 with *error_r. */
int s3_manifest_key(const struct delivery *d, const struct target *targets, size_t count,
		    const char *key, char *mkey, char id[MANIFEST_ENVELOPE_ID_SIZE],
		    const char **error_r);

/* This transaction's manifest at mkey (from s3_manifest_key(), with its envelope_id): the
 * envelope plus what was stored at key (size bytes, SHA-256 obj_hash, *res), PUT with the
 * object's headers oh. extra (NULL or an object) adds its members to the manifest (the
 * "journal" object of a journal report). 0 when it is stored now or was already (412: a retry of this
 * envelope), -1 otherwise (*st_r, reason). */
int s3_put_manifest(struct s3_client *c, const struct delivery *d, struct target *targets,
		    size_t count, const char *key, const char *mkey, const char *envelope_id,
		    uint64_t size, const char *obj_hash, const struct s3_result *res,
		    json_t *extra, const struct sigv4_param *oh, size_t oh_count, struct status *st_r,
		    char *reason, size_t reason_size);

#endif
