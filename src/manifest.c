/*
 * manifest - the envelope of a delivery as JSON, shared by the S3 and webhook drivers.
 * Every string set here is valid UTF-8 or is replaced (json_stringn refuses invalid UTF-8,
 * and an envelope may carry raw 8-bit text only with SMTPUTF8, which the parser validated).
 */
#include "manifest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

void manifest_time(time_t t, char *buf, size_t size)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* One "NAME LEN:VALUE\n" field of the envelope id. */
static int digest_field(EVP_MD_CTX *md, const char *name, const char *value)
{
	char head[48];
	size_t len = strlen(value);
	int n = snprintf(head, sizeof(head), "%s %zu:", name, len);

	if (n <= 0 || (size_t)n >= sizeof(head))
		return -1;
	if (EVP_DigestUpdate(md, head, (size_t)n) != 1 || EVP_DigestUpdate(md, value, len) != 1 ||
	    EVP_DigestUpdate(md, "\n", 1) != 1)
		return -1;
	return 0;
}

int manifest_envelope_id(const char *content_sha256, const char *sender,
			 const char *const *rcpts, size_t count,
			 char id_r[MANIFEST_ENVELOPE_ID_SIZE])
{
	static const char hex[] = "0123456789abcdef";
	static const char tag[] = "lmtpgw-envelope-v1\n";
	const char **sorted = malloc((count > 0 ? count : 1) * sizeof(*sorted));
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char digest[32];
	unsigned int dlen = 0;
	int ret = -1;

	if (sorted == NULL || md == NULL)
		goto out;
	if (count > 0)
		memcpy(sorted, rcpts, count * sizeof(*sorted));
	qsort(sorted, count, sizeof(*sorted), cmp_str);
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, tag, sizeof(tag) - 1) != 1 ||
	    digest_field(md, "content", content_sha256 != NULL ? content_sha256 : "") < 0 ||
	    digest_field(md, "sender", sender != NULL ? sender : "") < 0)
		goto out;
	for (size_t i = 0; i < count; i++) {
		/* a set: RCPT TO the same address twice is one recipient */
		if (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0)
			continue;
		if (digest_field(md, "rcpt", sorted[i]) < 0)
			goto out;
	}
	if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != sizeof(digest))
		goto out;
	for (size_t i = 0; i < sizeof(digest); i++) {
		id_r[2 * i] = hex[digest[i] >> 4];
		id_r[2 * i + 1] = hex[digest[i] & 0x0f];
	}
	id_r[2 * sizeof(digest)] = '\0';
	ret = 0;
out:
	EVP_MD_CTX_free(md);
	free(sorted);
	return ret;
}

/* Set key to a string when it is non-empty; a string jansson refuses becomes "?" rather than
 * losing the whole manifest. */
static int set_str(json_t *obj, const char *key, const char *value)
{
	if (value == NULL || value[0] == '\0')
		return 0;
	json_t *s = json_string(value);
	if (s == NULL)
		s = json_string("?");
	return json_object_set_new(obj, key, s);
}

static const char *body_name(enum envelope_body body)
{
	switch (body) {
	case BODY_7BIT:
		return "7BIT";
	case BODY_8BITMIME:
		return "8BITMIME";
	case BODY_BINARYMIME:
		return "BINARYMIME";
	default:
		return NULL;
	}
}

static json_t *recipient_json(const struct recipient *r)
{
	json_t *o = json_object();

	if (o == NULL)
		return NULL;
	set_str(o, "address", r->rcpt);
	set_str(o, "orcpt", r->params.orcpt);
	if (r->params.notify != 0) {
		json_t *n = json_array();
		static const struct {
			unsigned bit;
			const char *name;
		} names[] = { { ENVELOPE_NOTIFY_NEVER, "NEVER" },
			      { ENVELOPE_NOTIFY_SUCCESS, "SUCCESS" },
			      { ENVELOPE_NOTIFY_FAILURE, "FAILURE" },
			      { ENVELOPE_NOTIFY_DELAY, "DELAY" } };
		for (size_t i = 0; n != NULL && i < 4; i++) {
			if (r->params.notify & names[i].bit)
				json_array_append_new(n, json_string(names[i].name));
		}
		json_object_set_new(o, "notify", n);
	}
	return o;
}

json_t *manifest_build(const struct delivery *d, const struct target *targets,
		       size_t target_count)
{
	json_t *m = json_object(), *client = json_object(), *from = json_object();
	json_t *rcpts = json_array(), *tlist = json_array();
	char when[32];

	if (m == NULL || client == NULL || from == NULL || rcpts == NULL || tlist == NULL) {
		json_decref(m);
		json_decref(client);
		json_decref(from);
		json_decref(rcpts);
		json_decref(tlist);
		return NULL;
	}
	json_object_set_new(m, "version", json_integer(1));
	set_str(m, "session", d->session_id);
	set_str(m, "transaction", d->txid);
	set_str(m, "queue_id", d->queue_id);
	manifest_time(d->received, when, sizeof(when));
	set_str(m, "received", when);
	json_object_set_new(m, "size", json_integer((json_int_t)spool_size(d->spool)));
	set_str(m, "sha256", d->sha256);
	set_str(m, "message_id", d->msgid);

	set_str(client, "lhlo", d->lhlo);
	set_str(client, "address", d->client_addr);
	json_object_set_new(client, "tls", json_boolean(d->tls));
	if ((d->xforward_name && d->xforward_name[0]) || (d->xforward_addr && d->xforward_addr[0])) {
		json_t *xf = json_object();
		set_str(xf, "name", d->xforward_name);
		set_str(xf, "address", d->xforward_addr);
		json_object_set_new(client, "xforward", xf);
	}
	json_object_set_new(m, "client", client);

	json_object_set_new(from, "address", json_string(d->sender ? d->sender : ""));
	if (d->mail != NULL) {
		if (d->mail->has_size)
			json_object_set_new(from, "size", json_integer((json_int_t)d->mail->size));
		const char *body = body_name(d->mail->body);
		if (body != NULL)
			set_str(from, "body", body);
		json_object_set_new(from, "smtputf8", json_boolean(d->mail->smtputf8));
		if (d->mail->ret != RET_UNSPECIFIED)
			set_str(from, "ret", d->mail->ret == RET_FULL ? "FULL" : "HDRS");
		set_str(from, "envid", d->mail->envid);
	}
	json_object_set_new(m, "mail_from", from);

	for (size_t i = 0; i < d->rcpt_count; i++)
		json_array_append_new(rcpts, recipient_json(&d->rcpts[i]));
	json_object_set_new(m, "recipients", rcpts);
	for (size_t i = 0; i < target_count; i++)
		json_array_append_new(tlist, json_string(targets[i].rcpt->rcpt));
	json_object_set_new(m, "targets", tlist);
	return m;
}
