/*
 * replay - `lmtpgw replay` (see replay.h).
 *
 * Work list first (the keys of the S3 objects, or the files of the Maildirs), then --jobs
 * threads take items from it: read the item's envelopes (manifests), fetch its bytes into a
 * spool (memory, then an unlinked file: a big object is never held in memory), deliver each
 * envelope through the target driver, count. Nothing here keeps state between runs: being
 * resumable is the targets' idempotency (the keys derive from the content digest and the
 * recipients), so running the same replay again after an interruption re-sends only ids the
 * target has already seen.
 */
#include "replay.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "address.h"
#include "backend.h"
#include "config.h"
#include "log.h"
#include "recipient.h"
#include "runtime.h"
#include "s3_answer.h"
#include "s3_client.h"
#include "s3_fields.h"
#include "spool.h"

#define REPLAY_RCPTS_MAX 1000           /* recipients of one delivery (max_recipients' default) */
#define REPLAY_MANIFEST_MAX (8u << 20)  /* bytes of one manifest */
#define REPLAY_LIST_MAX (32u << 20)     /* bytes of one ListObjectsV2 page */
#define REPLAY_MANIFESTS_MAX 10000      /* manifests of one object */
#define REPLAY_JOBS_MAX 64

struct replay_options {
	const char *from, *to, *key, *prefix;
	bool has_since, has_until;
	time_t since, until;
	const char **rcpts;
	size_t rcpt_count;
	unsigned jobs;
	bool dry_run;
};

struct replay {
	struct runtime *rt;
	const struct config *cfg;
	struct replay_options o;
	struct backend_runtime *src, *dst;
	const struct s3_client *s3;     /* the source, when it is an s3 backend */
	bool src_maildir;
	/* the work list: S3 keys, or Maildir file paths with the recipient they belong to */
	char **items;
	const char **item_rcpt;
	size_t item_count, item_cap, next;
	pthread_mutex_t lock;
	/* counters (under lock) */
	size_t items_done, items_failed, items_skipped;
	size_t deliveries, rcpts_ok, rcpts_failed;
	bool tty;
};

/* --- small helpers ------------------------------------------------------------------------- */

static void progress(struct replay *r)
{
	if (!r->tty)
		return;
	fprintf(stderr, "\rreplay: %zu/%zu messages, %zu recipients delivered, %zu failed ",
		r->items_done, r->item_count, r->rcpts_ok, r->rcpts_failed);
	fflush(stderr);
}

/* "2026-11-25", "2026-11-25T07:00:00Z" or "2026-11-25 07:00:00" (UTC) -> time_t. */
static int parse_time(const char *s, time_t *t_r)
{
	struct tm tm;
	const char *end;

	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (end == NULL) {
		memset(&tm, 0, sizeof(tm));
		end = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
	}
	if (end == NULL) {
		memset(&tm, 0, sizeof(tm));
		end = strptime(s, "%Y-%m-%d", &tm);
	}
	if (end == NULL)
		return -1;
	if (*end == '.') /* fractions of a second, as S3 writes LastModified */
		while (*++end >= '0' && *end <= '9')
			;
	if (*end == 'Z')
		end++;
	if (*end != '\0')
		return -1;
	*t_r = timegm(&tm);
	return 0;
}

static bool in_window(const struct replay *r, time_t t)
{
	return (!r->o.has_since || t >= r->o.since) && (!r->o.has_until || t < r->o.until);
}

static int add_item(struct replay *r, const char *item, const char *rcpt)
{
	if (r->item_count == r->item_cap) {
		size_t cap = r->item_cap ? r->item_cap * 2 : 64;
		char **items = realloc(r->items, cap * sizeof(*items));
		if (items == NULL)
			return -1;
		r->items = items;
		const char **ir = realloc(r->item_rcpt, cap * sizeof(*ir));
		if (ir == NULL)
			return -1;
		r->item_rcpt = ir;
		r->item_cap = cap;
	}
	r->items[r->item_count] = strdup(item);
	if (r->items[r->item_count] == NULL)
		return -1;
	r->item_rcpt[r->item_count++] = rcpt;
	return 0;
}

/* --- S3: listing and fetching --------------------------------------------------------------- */

struct membuf {
	char *data;
	size_t len, max;
};

static int membuf_sink(void *ctx, const void *data, size_t len)
{
	struct membuf *b = ctx;

	if (len > b->max - b->len)
		return -1;
	char *n = realloc(b->data, b->len + len + 1);
	if (n == NULL)
		return -1;
	memcpy(n + b->len, data, len);
	b->data = n;
	b->len += len;
	b->data[b->len] = '\0';
	return 0;
}

static int spool_sink(void *ctx, const void *data, size_t len)
{
	const char *error;

	return spool_write(ctx, data, len, &error);
}

/* GET key (or the bucket with query) with the body going to sink. 0, or -1 with why. */
static int s3_get(const struct s3_client *c, const char *key, const struct sigv4_param *query,
		  size_t query_count, int (*sink)(void *, const void *, size_t), void *ctx,
		  char *why, size_t why_size)
{
	struct s3_req req = { .method = "GET", .key = key, .query = query,
			      .query_count = query_count, .payload_hash = SIGV4_EMPTY_SHA256,
			      .body = "", .body_len = 0, .sink = sink, .sink_ctx = ctx };
	struct http_response resp;
	struct status st;
	char reason[400];

	if (s3_perform((struct s3_client *)c, &req, &resp, &st, reason, sizeof(reason)) < 0) {
		snprintf(why, why_size, "%d %s %s", st.code, st.enhanced, reason);
		return -1;
	}
	int m = s3_check_answer(c, "GET", key != NULL ? key : "-", &resp, &st, reason,
				sizeof(reason));
	long http_status = resp.status;
	http_response_free(&resp);
	if (m != 0) {
		snprintf(why, why_size, "GET %s: HTTP %ld %s", key != NULL ? key : "(list)",
			 http_status, reason);
		return -1;
	}
	return 0;
}

/* Every key under prefix (ListObjectsV2, page by page). keep(key, last_modified) decides. */
static int s3_list(const struct s3_client *c, const char *prefix,
		   int (*keep)(void *ctx, const char *key, time_t modified), void *ctx,
		   char *why, size_t why_size)
{
	char token[1100] = "";

	for (;;) {
		struct sigv4_param q[4];
		size_t n = 0;
		q[n++] = (struct sigv4_param){ "list-type", "2" };
		q[n++] = (struct sigv4_param){ "max-keys", "1000" };
		q[n++] = (struct sigv4_param){ "prefix", prefix };
		if (token[0] != '\0')
			q[n++] = (struct sigv4_param){ "continuation-token", token };
		struct membuf page = { .max = REPLAY_LIST_MAX };
		if (s3_get(c, NULL, q, n, membuf_sink, &page, why, why_size) < 0) {
			free(page.data);
			return -1;
		}
		const char *p = page.data != NULL ? page.data : "";
		const char *end = p + page.len;
		int ret = 0;
		while (ret == 0 && (p = memmem(p, (size_t)(end - p), "<Contents>", 10)) != NULL) {
			const char *close = memmem(p, (size_t)(end - p), "</Contents>", 11);
			if (close == NULL)
				break;
			char key[S3_KEY_MAX + 1], modified[64];
			time_t t = 0;
			if (s3_xml_value(p, (size_t)(close - p), "Key", key, sizeof(key))) {
				if (s3_xml_value(p, (size_t)(close - p), "LastModified", modified,
						 sizeof(modified)))
					parse_time(modified, &t);
				ret = keep(ctx, key, t);
			}
			p = close + 11;
		}
		char truncated[16] = "";
		s3_xml_value(page.data, page.len, "IsTruncated", truncated, sizeof(truncated));
		token[0] = '\0';
		if (strcmp(truncated, "true") == 0)
			s3_xml_value(page.data, page.len, "NextContinuationToken", token,
				     sizeof(token));
		free(page.data);
		if (ret < 0) {
			snprintf(why, why_size, "out of memory");
			return -1;
		}
		if (token[0] == '\0')
			return 0;
	}
}

/* A key of the archive that is a message (not a manifest). */
static bool message_key(const char *key)
{
	size_t len = strlen(key);

	return strstr(key, ".manifests/") == NULL && !(len >= 5 && strcmp(key + len - 5, ".json") == 0);
}

static int keep_object(void *ctx, const char *key, time_t modified)
{
	struct replay *r = ctx;

	if (!message_key(key) || !in_window(r, modified))
		return 0;
	return add_item(r, key, NULL);
}

struct manifest_list {
	char **keys;
	size_t count;
};

static int keep_manifest(void *ctx, const char *key, time_t modified)
{
	struct manifest_list *l = ctx;
	size_t len = strlen(key);

	if (len < 5 || strcmp(key + len - 5, ".json") != 0 || l->count >= REPLAY_MANIFESTS_MAX)
		return 0;
	char **keys = realloc(l->keys, (l->count + 1) * sizeof(*keys));
	if (keys == NULL)
		return -1;
	l->keys = keys;
	if ((l->keys[l->count] = strdup(key)) == NULL)
		return -1;
	l->count++;
	return 0;
}

/* --- delivering ---------------------------------------------------------------------------- */

/* One envelope to deliver again: what the original transaction's manifest says. */
struct envelope_replay {
	const char *sender;
	const char *sha256;
	const char *msgid;
	const char *session, *txid, *queue_id;
	time_t received;
	const char **rcpts;
	size_t rcpt_count;
};

static void report_failure(struct replay *r, const char *item, const char *rcpt,
			   const char *what)
{
	pthread_mutex_lock(&r->lock);
	if (r->tty)
		fputc('\n', stderr);
	fprintf(stderr, "replay: FAILED %s%s%s%s: %s\n", item, rcpt ? " rcpt=<" : "",
		rcpt ? rcpt : "", rcpt ? ">" : "", what);
	pthread_mutex_unlock(&r->lock);
}

/* Call the target driver the way the dispatcher does: a batch driver gets the targets of one
 * request (same request_key) in one call, another driver one call per target. */
static void drive(struct backend_runtime *br, const struct delivery *d, struct target *targets,
		  size_t count)
{
	const struct backend_driver *drv = br->inst->driver;

	if (!drv->batch) {
		for (size_t i = 0; i < count; i++)
			drv->deliver(br->state, d, &targets[i], 1);
		return;
	}
	if (drv->request_key == NULL) {
		drv->deliver(br->state, d, targets, count);
		return;
	}
	/* group by request key: targets with the same key are moved next to each other */
	char (*keys)[512] = calloc(count, sizeof(*keys));
	bool *own = calloc(count, sizeof(*own));
	if (keys == NULL || own == NULL) {
		free(keys);
		free(own);
		drv->deliver(br->state, d, targets, count);
		return;
	}
	for (size_t i = 0; i < count; i++)
		own[i] = drv->request_key(br->state, &targets[i], keys[i], sizeof(keys[i])) < 0;
	size_t start = 0;
	while (start < count) {
		size_t end = start + 1;
		if (!own[start]) {
			for (size_t j = start + 1; j < count; j++) {
				if (!own[j] && strcmp(keys[j], keys[start]) == 0) {
					struct target tmp = targets[end];
					targets[end] = targets[j];
					targets[j] = tmp;
					char kt[512];
					memcpy(kt, keys[end], sizeof(kt));
					memcpy(keys[end], keys[j], sizeof(kt));
					memcpy(keys[j], kt, sizeof(kt));
					bool ot = own[end];
					own[end] = own[j];
					own[j] = ot;
					end++;
				}
			}
		}
		drv->deliver(br->state, d, &targets[start], end - start);
		start = end;
	}
	free(keys);
	free(own);
}

/* Deliver one envelope of item from spool to the target. Returns the failed recipients. */
static size_t deliver_envelope(struct replay *r, const char *item, struct spool *spool,
			       const struct envelope_replay *e)
{
	struct recipient *rcpts = calloc(e->rcpt_count, sizeof(*rcpts));
	struct target *targets = calloc(e->rcpt_count, sizeof(*targets));
	struct mail_params mail;
	size_t failed = 0, n = 0;

	if (rcpts == NULL || targets == NULL) {
		free(rcpts);
		free(targets);
		report_failure(r, item, NULL, "out of memory");
		return e->rcpt_count;
	}
	memset(&mail, 0, sizeof(mail));
	for (size_t i = 0; i < e->rcpt_count; i++) {
		char path[ADDRESS_PATH_MAX + 3];
		size_t pos = 0;
		const char *error = "trailing text";
		snprintf(path, sizeof(path), "<%s>", e->rcpts[i]);
		if (address_parse_path(path, &pos, &rcpts[n].addr, false, true, true, &error) < 0 ||
		    path[pos] != '\0') {
			report_failure(r, item, e->rcpts[i], error);
			failed++;
			continue;
		}
		/* the normalised forms (the route itself does not matter: --to names the backend) */
		recipient_route(&rcpts[n], r->cfg->router, r->cfg->lowercase_local_part,
				r->cfg->subaddress_separator);
		n++;
	}
	struct delivery d = {
		.spool = spool, .trace = "", .trace_len = 0, .delivered_to = false,
		.sender = e->sender, .mail = &mail, .session_id = e->session, .txid = e->txid,
		.msgid = e->msgid, .sha256 = e->sha256, .received = e->received, .cfg = r->cfg,
		.rcpts = rcpts, .rcpt_count = n, .lhlo = "lmtpgw-replay", .client_addr = "replay",
		.xforward_name = "", .xforward_addr = "", .queue_id = e->queue_id, .tls = false,
	};
	for (size_t i = 0; i < n; i++) {
		targets[i].rcpt = &rcpts[i];
		delivery_vars(&d, &rcpts[i], &targets[i].vars);
		status_must(&targets[i].status, 451, "4.3.0", "no result from the driver");
	}
	if (n > 0)
		drive(r->dst, &d, targets, n);
	size_t ok = 0;
	for (size_t i = 0; i < n; i++) {
		const struct status *st = &targets[i].status;
		if (st->code >= 200 && st->code <= 299) {
			ok++;
			log_info("event=replay item=%s rcpt=<%s> backend=%s result=ok ref=\"%s\"",
				 item, targets[i].rcpt->rcpt, r->dst->inst->name, targets[i].ref);
		} else {
			char what[600];
			snprintf(what, sizeof(what), "%s %d %s %s (%s)", r->dst->inst->name, st->code,
				 st->enhanced, st->text, targets[i].ref);
			report_failure(r, item, targets[i].rcpt->rcpt, what);
			failed++;
		}
	}
	pthread_mutex_lock(&r->lock);
	r->deliveries++;
	r->rcpts_ok += ok;
	r->rcpts_failed += failed;
	pthread_mutex_unlock(&r->lock);
	free(rcpts);
	free(targets);
	return failed;
}

static const char *jstr(const json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s != NULL ? s : dflt;
}

/* The envelope a manifest describes; rcpts points into the manifest (or --rcpt). */
static int envelope_from_manifest(struct replay *r, json_t *m, struct envelope_replay *e,
				  const char **rcpt_buf)
{
	memset(e, 0, sizeof(*e));
	e->sender = jstr(json_object_get(m, "mail_from"), "address", "");
	e->sha256 = jstr(m, "sha256", "");
	/* a journaled original: its digest (the manifest's "sha256" is the report's) */
	json_t *j = json_object_get(m, "journal");
	if (json_is_true(json_object_get(j, "parsed")))
		e->sha256 = jstr(j, "original_sha256", e->sha256);
	e->msgid = jstr(m, "message_id", "");
	e->session = jstr(m, "session", "replay");
	e->txid = jstr(m, "transaction", "replay");
	e->queue_id = jstr(m, "queue_id", "");
	e->received = time(NULL);
	parse_time(jstr(m, "received", ""), &e->received);
	if (r->o.rcpt_count > 0) {
		e->rcpts = r->o.rcpts;
		e->rcpt_count = r->o.rcpt_count;
		return 0;
	}
	json_t *t = json_object_get(m, "targets");
	size_t i;
	json_t *v;
	json_array_foreach(t, i, v) {
		if (e->rcpt_count == REPLAY_RCPTS_MAX)
			break;
		if (json_string_value(v) != NULL)
			rcpt_buf[e->rcpt_count++] = json_string_value(v);
	}
	e->rcpts = rcpt_buf;
	return e->rcpt_count > 0 ? 0 : -1;
}

/* Is this object a journal report kept beside its original (journal_keep_report)? The
 * original is replayed; the report would be a second copy for the consumer. */
static bool is_kept_report(json_t *m, const char *key)
{
	json_t *j = json_object_get(m, "journal");
	const char *rk = json_string_value(json_object_get(j, "report_key"));

	return rk != NULL && strcmp(rk, key) == 0;
}

static struct spool *new_spool(struct replay *r)
{
	return spool_new((size_t)r->cfg->spool_memory_max, r->cfg->spool_dir, UINT64_MAX / 2);
}

/* One S3 object: its manifests, its bytes, its envelopes delivered. 0, 1 skipped, -1 failed. */
static int replay_s3_object(struct replay *r, const char *key)
{
	char why[600], mprefix[S3_KEY_MAX + 32];
	struct manifest_list ml = { NULL, 0 };
	json_t **manifests = NULL;
	struct spool *spool = NULL;
	int ret = -1;
	const char **rcpt_buf = calloc(REPLAY_RCPTS_MAX, sizeof(*rcpt_buf));

	if (rcpt_buf == NULL) {
		report_failure(r, key, NULL, "out of memory");
		return -1;
	}
	snprintf(mprefix, sizeof(mprefix), "%s.manifests/", key);
	if (s3_list(r->s3, mprefix, keep_manifest, &ml, why, sizeof(why)) < 0) {
		report_failure(r, key, NULL, why);
		goto out;
	}
	manifests = calloc(ml.count + 1, sizeof(*manifests));
	if (manifests == NULL)
		goto out;
	for (size_t i = 0; i < ml.count; i++) {
		struct membuf b = { .max = REPLAY_MANIFEST_MAX };
		json_error_t jerr;
		if (s3_get(r->s3, ml.keys[i], NULL, 0, membuf_sink, &b, why, sizeof(why)) < 0) {
			free(b.data);
			report_failure(r, key, NULL, why);
			goto out;
		}
		manifests[i] = json_loadb(b.data != NULL ? b.data : "", b.len, 0, &jerr);
		free(b.data);
		if (!json_is_object(manifests[i])) {
			snprintf(why, sizeof(why), "manifest %s: not JSON: %s", ml.keys[i], jerr.text);
			report_failure(r, key, NULL, why);
			goto out;
		}
		if (is_kept_report(manifests[i], key)) {
			ret = 1;
			goto out;
		}
	}
	if (ml.count == 0 && r->o.rcpt_count == 0) {
		report_failure(r, key, NULL, "no manifest (<key>.manifests/) and no --rcpt");
		goto out;
	}
	/* --rcpt: one delivery per object, the envelope of its first manifest otherwise */
	size_t envelopes = r->o.rcpt_count > 0 || ml.count == 0 ? 1 : ml.count;
	if (r->o.dry_run) {
		for (size_t i = 0; i < envelopes; i++) {
			struct envelope_replay e;
			json_t *m = ml.count > 0 ? manifests[i] : json_object();
			if (envelope_from_manifest(r, m, &e, rcpt_buf) == 0) {
				pthread_mutex_lock(&r->lock);
				printf("would deliver %s sender=<%s> sha256=%s to %s:", key, e.sender,
				       e.sha256[0] ? e.sha256 : "(of the object)", r->dst->inst->name);
				for (size_t k = 0; k < e.rcpt_count; k++)
					printf(" <%s>", e.rcpts[k]);
				printf("\n");
				pthread_mutex_unlock(&r->lock);
			}
			if (ml.count == 0)
				json_decref(m);
		}
		ret = 0;
		goto out;
	}
	spool = new_spool(r);
	const char *error;
	if (spool == NULL || s3_get(r->s3, key, NULL, 0, spool_sink, spool, why, sizeof(why)) < 0 ||
	    spool_finish(spool, &error) < 0) {
		report_failure(r, key, NULL, spool == NULL ? "cannot create a spool" : why);
		goto out;
	}
	size_t failed = 0;
	for (size_t i = 0; i < envelopes; i++) {
		struct envelope_replay e;
		json_t *m = ml.count > 0 ? manifests[i] : NULL;
		json_t *empty = m == NULL ? json_object() : NULL;
		if (envelope_from_manifest(r, m != NULL ? m : empty, &e, rcpt_buf) < 0) {
			report_failure(r, key, NULL, "a manifest names no recipient");
			failed++;
			json_decref(empty);
			continue;
		}
		if (e.sha256[0] == '\0')
			e.sha256 = spool_sha256_hex(spool);
		failed += deliver_envelope(r, key, spool, &e);
		json_decref(empty);
	}
	ret = failed == 0 ? 0 : -1;
out:
	spool_free(&spool);
	for (size_t i = 0; i < ml.count; i++) {
		free(ml.keys[i]);
		if (manifests != NULL)
			json_decref(manifests[i]);
	}
	free(ml.keys);
	free(manifests);
	free(rcpt_buf);
	return ret;
}

/* --- Maildir ------------------------------------------------------------------------------- */

/* One Maildir file: delivered to the recipient whose Maildir it is in. The Return-Path line
 * (written by lmtpgw's trace headers) gives the sender; the digest is that of the file, so a
 * replay from a Maildir is idempotent against itself (not against the original delivery,
 * whose digest was of the content without our trace headers). */
static int replay_maildir_file(struct replay *r, const char *path, const char *rcpt)
{
	char sender[ADDRESS_PATH_MAX + 1] = "";
	const char *error;
	FILE *f = fopen(path, "rb");

	if (f == NULL) {
		report_failure(r, path, NULL, strerror(errno));
		return -1;
	}
	struct spool *spool = new_spool(r);
	char buf[65536];
	size_t got;
	bool first = true;
	int ret = 0;
	while (spool != NULL && (got = fread(buf, 1, sizeof(buf), f)) > 0) {
		if (first && got > 14 && strncasecmp(buf, "Return-Path:", 12) == 0) {
			const char *lt = memchr(buf, '<', got), *gt = lt ? memchr(lt, '>', got - (size_t)(lt - buf)) : NULL;
			if (lt != NULL && gt != NULL && (size_t)(gt - lt - 1) < sizeof(sender))
				snprintf(sender, sizeof(sender), "%.*s", (int)(gt - lt - 1), lt + 1);
		}
		first = false;
		if (spool_write(spool, buf, got, &error) < 0) {
			ret = -1;
			break;
		}
	}
	if (ferror(f))
		ret = -1;
	fclose(f);
	if (spool == NULL || ret < 0 || spool_finish(spool, &error) < 0) {
		report_failure(r, path, NULL, "cannot read the file into a spool");
		spool_free(&spool);
		return -1;
	}
	const char *one[1] = { rcpt };
	struct envelope_replay e = {
		.sender = sender, .sha256 = spool_sha256_hex(spool), .msgid = "",
		.session = "replay", .txid = "replay", .queue_id = "", .received = time(NULL),
		.rcpts = one, .rcpt_count = 1,
	};
	if (r->o.dry_run) {
		pthread_mutex_lock(&r->lock);
		printf("would deliver %s sender=<%s> sha256=%s to %s: <%s>\n", path, sender,
		       e.sha256, r->dst->inst->name, rcpt);
		pthread_mutex_unlock(&r->lock);
		spool_free(&spool);
		return 0;
	}
	size_t failed = deliver_envelope(r, path, spool, &e);
	spool_free(&spool);
	return failed == 0 ? 0 : -1;
}

/* The files of the Maildir of rcpt (new/ and cur/ of the path the backend would use). */
static int list_maildir(struct replay *r, const char *rcpt)
{
	struct recipient rc;
	char path[ADDRESS_PATH_MAX + 3], where[4200], dir[4200];
	const char *error = "trailing text";
	size_t pos = 0;

	memset(&rc, 0, sizeof(rc));
	snprintf(path, sizeof(path), "<%s>", rcpt);
	if (address_parse_path(path, &pos, &rc.addr, false, true, true, &error) < 0 ||
	    path[pos] != '\0') {
		fprintf(stderr, "lmtpgw replay: --rcpt %s: %s\n", rcpt, error);
		return -1;
	}
	recipient_route(&rc, r->cfg->router, r->cfg->lowercase_local_part,
			r->cfg->subaddress_separator);
	struct delivery d = { .sender = "", .sha256 = "", .msgid = "", .session_id = "",
			      .txid = "", .received = time(NULL) };
	struct template_vars vars;
	delivery_vars(&d, &rc, &vars);
	where[0] = '\0';
	r->src->inst->driver->explain(r->src->state, &rc, &vars, where, sizeof(where));
	/* "maildir DIR/new/" (maildir.c, maildir_explain) */
	size_t len = strlen(where);
	if (strncmp(where, "maildir ", 8) != 0 || len < 13 || strcmp(where + len - 5, "/new/") != 0) {
		fprintf(stderr, "lmtpgw replay: --rcpt %s: %s\n", rcpt, where);
		return -1;
	}
	snprintf(dir, sizeof(dir), "%.*s", (int)(len - 8 - 5), where + 8);
	static const char *const subdirs[] = { "new", "cur" };
	for (size_t s = 0; s < 2; s++) {
		char sub[4300];
		snprintf(sub, sizeof(sub), "%s/%s", dir, subdirs[s]);
		DIR *dh = opendir(sub);
		if (dh == NULL)
			continue;
		struct dirent *de;
		while ((de = readdir(dh)) != NULL) {
			char file[4600];
			struct stat sb;
			if (de->d_name[0] == '.')
				continue;
			if (r->o.key != NULL && strcmp(de->d_name, r->o.key) != 0 &&
			    strncmp(de->d_name, r->o.key, strlen(r->o.key)) != 0)
				continue;
			if (r->o.prefix != NULL && strncmp(de->d_name, r->o.prefix,
							   strlen(r->o.prefix)) != 0)
				continue;
			snprintf(file, sizeof(file), "%s/%s", sub, de->d_name);
			if (stat(file, &sb) < 0 || !S_ISREG(sb.st_mode) || !in_window(r, sb.st_mtime))
				continue;
			if (add_item(r, file, rcpt) < 0) {
				closedir(dh);
				return -1;
			}
		}
		closedir(dh);
	}
	return 0;
}

/* --- the run ------------------------------------------------------------------------------- */

static void *worker(void *arg)
{
	struct replay *r = arg;

	for (;;) {
		pthread_mutex_lock(&r->lock);
		if (r->next == r->item_count) {
			pthread_mutex_unlock(&r->lock);
			return NULL;
		}
		size_t i = r->next++;
		pthread_mutex_unlock(&r->lock);
		int res = r->src_maildir ? replay_maildir_file(r, r->items[i], r->item_rcpt[i])
					 : replay_s3_object(r, r->items[i]);
		pthread_mutex_lock(&r->lock);
		r->items_done++;
		if (res < 0)
			r->items_failed++;
		else if (res > 0)
			r->items_skipped++;
		progress(r);
		pthread_mutex_unlock(&r->lock);
	}
}

static void usage(void)
{
	fprintf(stderr,
		"usage: lmtpgw [-c FILE] replay --from BACKEND [--key K | --prefix P |\n"
		"                          --since T --until T] --to BACKEND [--rcpt ADDR]...\n"
		"                          [--jobs N] [--dry-run]\n"
		"  T: 2026-11-25 or 2026-11-25T07:00:00Z (UTC; --until is exclusive)\n");
}

static struct backend_runtime *find_backend(struct runtime *rt, const char *name)
{
	for (size_t i = 0; i < rt->cfg->backend_count; i++) {
		if (strcmp(rt->cfg->backends[i].name, name) == 0)
			return rt->backends[i];
	}
	return NULL;
}

static int parse_options(struct replay *r, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "from", required_argument, NULL, 'F' }, { "to", required_argument, NULL, 'T' },
		{ "key", required_argument, NULL, 'k' }, { "prefix", required_argument, NULL, 'p' },
		{ "since", required_argument, NULL, 's' }, { "until", required_argument, NULL, 'u' },
		{ "rcpt", required_argument, NULL, 'r' }, { "jobs", required_argument, NULL, 'j' },
		{ "dry-run", no_argument, NULL, 'n' }, { NULL, 0, NULL, 0 },
	};
	int opt;

	r->o.jobs = 4;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'F':
			r->o.from = optarg;
			break;
		case 'T':
			r->o.to = optarg;
			break;
		case 'k':
			r->o.key = optarg;
			break;
		case 'p':
			r->o.prefix = optarg;
			break;
		case 's':
			if (parse_time(optarg, &r->o.since) < 0)
				goto bad_time;
			r->o.has_since = true;
			break;
		case 'u':
			if (parse_time(optarg, &r->o.until) < 0)
				goto bad_time;
			r->o.has_until = true;
			break;
		case 'r': {
			if (r->o.rcpt_count == REPLAY_RCPTS_MAX) {
				fprintf(stderr, "lmtpgw replay: too many --rcpt\n");
				return -1;
			}
			const char **n = realloc(r->o.rcpts, (r->o.rcpt_count + 1) * sizeof(*n));
			if (n == NULL)
				return -1;
			r->o.rcpts = n;
			r->o.rcpts[r->o.rcpt_count++] = optarg;
			break;
		}
		case 'j': {
			char *end;
			long j = strtol(optarg, &end, 10);
			if (*end != '\0' || j < 1 || j > REPLAY_JOBS_MAX) {
				fprintf(stderr, "lmtpgw replay: --jobs 1 to %d\n", REPLAY_JOBS_MAX);
				return -1;
			}
			r->o.jobs = (unsigned)j;
			break;
		}
		case 'n':
			r->o.dry_run = true;
			break;
		default:
			usage();
			return -1;
		}
	}
	if (optind != argc || r->o.from == NULL || r->o.to == NULL ||
	    (r->o.key != NULL && (r->o.prefix != NULL || r->o.has_since || r->o.has_until))) {
		usage();
		return -1;
	}
	return 0;
bad_time:
	fprintf(stderr, "lmtpgw replay: %s: not a time (2026-11-25 or 2026-11-25T07:00:00Z)\n",
		optarg);
	return -1;
}

int replay_main(struct runtime *rt, int argc, char **argv)
{
	struct replay r;
	int rc = 64;

	memset(&r, 0, sizeof(r));
	r.rt = rt;
	r.cfg = rt->cfg;
	pthread_mutex_init(&r.lock, NULL);
	if (parse_options(&r, argc, argv) < 0)
		goto out;
	r.src = find_backend(rt, r.o.from);
	r.dst = find_backend(rt, r.o.to);
	if (r.src == NULL || r.dst == NULL) {
		fprintf(stderr, "lmtpgw replay: no backend '%s' in the configuration\n",
			r.src == NULL ? r.o.from : r.o.to);
		rc = 78;
		goto out;
	}
	const char *src_driver = r.src->inst->driver->name;
	if (strcmp(src_driver, "s3") == 0) {
		r.s3 = s3_backend_client(r.src->state);
	} else if (strcmp(src_driver, "maildir") == 0) {
		r.src_maildir = true;
		if (r.o.rcpt_count == 0) {
			fprintf(stderr, "lmtpgw replay: --from a maildir backend needs --rcpt (whose "
					"Maildir to read)\n");
			goto out;
		}
	} else {
		fprintf(stderr, "lmtpgw replay: --from %s: driver %s cannot be read (s3 or maildir)\n",
			r.o.from, src_driver);
		rc = 78;
		goto out;
	}
	r.tty = isatty(STDERR_FILENO) == 1;

	/* the work list */
	char why[600];
	rc = 1;
	if (r.src_maildir) {
		for (size_t i = 0; i < r.o.rcpt_count; i++) {
			if (list_maildir(&r, r.o.rcpts[i]) < 0)
				goto out;
		}
	} else if (r.o.key != NULL) {
		if (add_item(&r, r.o.key, NULL) < 0)
			goto out;
	} else if (s3_list(r.s3, r.o.prefix != NULL ? r.o.prefix : "", keep_object, &r, why,
			   sizeof(why)) < 0) {
		fprintf(stderr, "lmtpgw replay: cannot list %s: %s\n", r.o.from, why);
		goto out;
	}

	/* the workers */
	unsigned jobs = r.o.jobs < r.item_count ? r.o.jobs : (unsigned)r.item_count;
	pthread_t threads[REPLAY_JOBS_MAX];
	unsigned started = 0;
	for (; started < jobs; started++) {
		if (pthread_create(&threads[started], NULL, worker, &r) != 0)
			break;
	}
	if (started == 0 && r.item_count > 0)
		worker(&r);
	for (unsigned i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	if (r.tty)
		fputc('\n', stderr);
	printf("replay: %s %s -> %s: %zu messages, %zu delivered, %zu failed, %zu skipped; "
	       "%zu recipients delivered, %zu failed%s\n",
	       r.o.dry_run ? "(dry run)" : "from", r.o.from, r.o.to, r.item_count,
	       r.item_count - r.items_failed - r.items_skipped, r.items_failed, r.items_skipped,
	       r.rcpts_ok, r.rcpts_failed,
	       r.items_failed > 0 ? " (see the FAILED lines; a second run re-sends only what the "
				    "target may already have, under the same ids)" : "");
	fflush(stdout);
	rc = r.items_failed > 0 || r.rcpts_failed > 0 ? 1 : 0;
out:
	for (size_t i = 0; i < r.item_count; i++)
		free(r.items[i]);
	free(r.items);
	free(r.item_rcpt);
	free(r.o.rcpts);
	pthread_mutex_destroy(&r.lock);
	return rc;
}
