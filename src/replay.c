/*
 * replay - `lmtpgw replay` (see replay.h).
 *
 * Work list first (the S3 objects with the envelopes (manifests) selected for each, from one
 * listing; or the files of the Maildirs), then --jobs threads take items from it: read the
 * item's envelopes one at a time, fetch its bytes into a spool once (memory, then an unlinked
 * file: a big object is never held in memory), deliver each envelope through the target driver
 * (via dedupe_deliver), count. Nothing here keeps state between runs: being
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
#include "dedupe.h"
#include "log.h"
#include "privileges.h"
#include "recipient.h"
#include "runtime.h"
#include "s3_answer.h"
#include "s3_client.h"
#include "s3_fields.h"
#include "spool.h"

/* No limit on the recipients of one envelope or the envelopes of one object: a manifest is
 * bounded by its size, and the envelopes of an object are read one at a time. */
#define REPLAY_RCPT_OPTIONS_MAX 1000    /* --rcpt options (refused beyond, never truncated) */
#define REPLAY_MANIFEST_MAX (8u << 20)  /* bytes of one manifest (bigger: a FAILED line) */
#define REPLAY_LIST_MAX (32u << 20)     /* bytes of one ListObjectsV2 page */
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

/* S3 keys, kept with their LastModified while the work list is built. */
struct key_list {
	char **keys;
	time_t *modified;
	size_t count, cap;
};

/* One unit of work: an S3 object with the manifests (envelopes) to replay from it, or a
 * Maildir file with the recipient whose Maildir it is in. */
struct work_item {
	char *name;
	const char *rcpt;
	bool manifests_known;           /* false (--key): list <key>.manifests/ when replaying */
	struct key_list manifests;
};

struct replay {
	struct runtime *rt;
	const struct config *cfg;
	struct replay_options o;
	struct backend_runtime *src, *dst;
	const struct s3_client *s3;     /* the source, when it is an s3 backend */
	bool src_maildir;
	struct work_item *items;
	size_t item_count, item_cap, next;
	pthread_mutex_t lock;
	/* counters (under lock) */
	size_t items_done, items_failed, items_skipped;
	size_t deliveries, rcpts_ok, rcpts_failed, rcpts_left_out, orphans;
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

static int key_list_add(struct key_list *l, const char *key, time_t modified)
{
	if (l->count == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 8;
		char **keys = realloc(l->keys, cap * sizeof(*keys));
		if (keys == NULL)
			return -1;
		l->keys = keys;
		time_t *m = realloc(l->modified, cap * sizeof(*m));
		if (m == NULL)
			return -1;
		l->modified = m;
		l->cap = cap;
	}
	if ((l->keys[l->count] = strdup(key)) == NULL)
		return -1;
	l->modified[l->count++] = modified;
	return 0;
}

static void key_list_free(struct key_list *l)
{
	for (size_t i = 0; i < l->count; i++)
		free(l->keys[i]);
	free(l->keys);
	free(l->modified);
	memset(l, 0, sizeof(*l));
}

/* Adds the item; manifests (may be NULL) is moved into it, also on failure. */
static int add_item(struct replay *r, const char *item, const char *rcpt,
		    struct key_list *manifests)
{
	if (r->item_count == r->item_cap) {
		size_t cap = r->item_cap ? r->item_cap * 2 : 64;
		struct work_item *items = realloc(r->items, cap * sizeof(*items));
		if (items == NULL) {
			if (manifests != NULL)
				key_list_free(manifests);
			return -1;
		}
		r->items = items;
		r->item_cap = cap;
	}
	struct work_item *w = &r->items[r->item_count];
	memset(w, 0, sizeof(*w));
	if ((w->name = strdup(item)) == NULL) {
		if (manifests != NULL)
			key_list_free(manifests);
		return -1;
	}
	w->rcpt = rcpt;
	if (manifests != NULL) {
		w->manifests_known = true;
		w->manifests = *manifests;
		memset(manifests, 0, sizeof(*manifests));
	}
	r->item_count++;
	return 0;
}

static void report_failure(struct replay *r, const char *item, const char *rcpt,
			   const char *what);

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
		if (strcmp(truncated, "true") == 0 &&
		    !s3_xml_value(page.data, page.len, "NextContinuationToken", token,
				  sizeof(token)))
			token[0] = '\0';
		free(page.data);
		if (ret < 0) {
			snprintf(why, why_size, "out of memory");
			return -1;
		}
		if (token[0] == '\0' && strcmp(truncated, "true") == 0) {
			/* a listing cut short must not look like the whole archive */
			snprintf(why, why_size, "a truncated listing without a continuation token");
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

/* A manifest "<object key>.manifests/<id>.json": the length of the object key, or 0. */
static size_t manifest_object_len(const char *key)
{
	const char *m = strstr(key, ".manifests/");
	size_t len = strlen(key);

	if (m == NULL || m == key || len < 5 || strcmp(key + len - 5, ".json") != 0)
		return 0;
	return (size_t)(m - key);
}

/* The whole listing under --prefix: the objects, and the manifests (envelopes). */
struct listing {
	struct key_list objects, manifests;
};

static int keep_listed(void *ctx, const char *key, time_t modified)
{
	struct listing *l = ctx;

	if (message_key(key))
		return key_list_add(&l->objects, key, modified);
	if (manifest_object_len(key) > 0)
		return key_list_add(&l->manifests, key, modified);
	return 0;
}

static int keep_manifest(void *ctx, const char *key, time_t modified)
{
	return manifest_object_len(key) > 0 ? key_list_add(ctx, key, modified) : 0;
}

struct object_ref {
	const char *key;
	size_t index;
};

static int object_ref_cmp(const void *a, const void *b)
{
	return strcmp(((const struct object_ref *)a)->key, ((const struct object_ref *)b)->key);
}

/* The work list from a listing. --since/--until select envelopes, not objects: each manifest
 * by its own LastModified (when that envelope was stored, which for a retry, a later chunk or
 * a second journaling is later than the object's first PUT), the object replayed once per
 * selected envelope. An object without manifests (only replayable with --rcpt) is selected by
 * its own LastModified. */
static int build_work_list(struct replay *r, struct listing *l)
{
	size_t n = l->objects.count;
	struct object_ref *refs = calloc(n + 1, sizeof(*refs));
	struct key_list *selected = calloc(n + 1, sizeof(*selected));
	bool *has_manifest = calloc(n + 1, sizeof(*has_manifest));
	int ret = -1;

	if (refs == NULL || selected == NULL || has_manifest == NULL)
		goto out;
	for (size_t i = 0; i < n; i++)
		refs[i] = (struct object_ref){ l->objects.keys[i], i };
	qsort(refs, n, sizeof(*refs), object_ref_cmp);
	for (size_t m = 0; m < l->manifests.count; m++) {
		const char *mkey = l->manifests.keys[m];
		size_t olen = manifest_object_len(mkey);
		char *okey = strndup(mkey, olen);
		if (okey == NULL)
			goto out;
		struct object_ref want = { okey, 0 };
		const struct object_ref *found = n > 0 ? bsearch(&want, refs, n, sizeof(*refs),
								 object_ref_cmp) : NULL;
		free(okey);
		if (found != NULL)
			has_manifest[found->index] = true;
		if (!in_window(r, l->manifests.modified[m]))
			continue;
		if (found == NULL) {
			/* an envelope whose message is gone: say so, never pass over it quietly */
			report_failure(r, mkey, NULL, "a manifest without its object");
			r->orphans++;
			continue;
		}
		if (key_list_add(&selected[found->index], mkey, l->manifests.modified[m]) < 0)
			goto out;
	}
	/* an object whose envelopes all lie outside the window is not replayed */
	for (size_t i = 0; i < n; i++) {
		const char *key = l->objects.keys[i];
		if (selected[i].count > 0) {
			if (add_item(r, key, NULL, &selected[i]) < 0)
				goto out;
		} else if (!has_manifest[i] && in_window(r, l->objects.modified[i])) {
			struct key_list none = { 0 };
			if (add_item(r, key, NULL, &none) < 0)
				goto out;
		}
	}
	ret = 0;
out:
	for (size_t i = 0; selected != NULL && i < n; i++)
		key_list_free(&selected[i]);
	free(selected);
	free(refs);
	free(has_manifest);
	return ret;
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

/* Call the target driver the way the dispatcher does, through the memory of stored copies
 * (dedupe_db: a second replay stores no second copy): a batch driver gets the targets of one
 * request (same request_key, the dispatcher's REQUEST_KEY_MAX) in one call, in their original
 * order, another driver one call per target. */
static void drive(struct replay *r, struct backend_runtime *br, const struct delivery *d,
		  struct target *targets, size_t count)
{
	const struct backend_driver *drv = br->inst->driver;
	struct dedupe *dedupe = r->rt->dedupe;

	if (drv->batch && (drv->request_key == NULL || count == 1)) {
		dedupe_deliver(dedupe, br->inst, br->state, d, targets, count);
		return;
	}
	char **keys = drv->batch ? calloc(count, sizeof(*keys)) : NULL;
	char *key = drv->batch ? malloc(REQUEST_KEY_MAX) : NULL;
	if (keys == NULL || key == NULL) {
		/* not a batch driver, or out of memory: one request a target is always right */
		free(keys);
		free(key);
		for (size_t i = 0; i < count; i++)
			dedupe_deliver(dedupe, br->inst, br->state, d, &targets[i], 1);
		return;
	}
	for (size_t i = 0; i < count; i++) {
		/* a target without a key (or out of memory for it) is a request of its own */
		if (drv->request_key(br->state, &targets[i], key, REQUEST_KEY_MAX) == 0)
			keys[i] = strdup(key);
	}
	size_t start = 0;
	while (start < count) {
		size_t end = start + 1;
		for (size_t j = start + 1; keys[start] != NULL && j < count; j++) {
			if (keys[j] != NULL && strcmp(keys[j], keys[start]) == 0) {
				struct target tmp = targets[end];
				targets[end] = targets[j];
				targets[j] = tmp;
				char *kt = keys[end];
				keys[end] = keys[j];
				keys[j] = kt;
				end++;
			}
		}
		dedupe_deliver(dedupe, br->inst, br->state, d, &targets[start], end - start);
		start = end;
	}
	for (size_t i = 0; i < count; i++)
		free(keys[i]);
	free(keys);
	free(key);
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
		drive(r, r->dst, &d, targets, n);
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

/* Does the current route of rcpt name the --to backend as a target? The original request to
 * that backend held only such recipients: the others' mail never went there, and a request
 * with more recipients would get another idempotency key (a duplicate event). An address that
 * does not parse is kept: the delivery reports it. */
static bool routed_to_target(const struct replay *r, const char *rcpt)
{
	struct recipient rc;
	char path[ADDRESS_PATH_MAX + 3];
	const char *error;
	size_t pos = 0;

	memset(&rc, 0, sizeof(rc));
	if ((size_t)snprintf(path, sizeof(path), "<%s>", rcpt) >= sizeof(path) ||
	    address_parse_path(path, &pos, &rc.addr, false, true, true, &error) < 0 ||
	    path[pos] != '\0')
		return true;
	const struct route_rule *rule = recipient_route(&rc, r->cfg->router,
							r->cfg->lowercase_local_part,
							r->cfg->subaddress_separator);
	for (size_t i = 0; rule != NULL && i < rule->target_count; i++) {
		if (rule->targets[i].backend < r->cfg->backend_count &&
		    r->rt->backends[rule->targets[i].backend] == r->dst)
			return true;
	}
	return false;
}

/* The envelope a manifest describes. Its recipients are --rcpt, or those of the manifest
 * whose route names the --to backend (*left_out counts the others); *owned (to free) holds
 * them. -1: the manifest names no recipient at all. */
static int envelope_from_manifest(struct replay *r, json_t *m, struct envelope_replay *e,
				  const char ***owned, size_t *left_out)
{
	memset(e, 0, sizeof(*e));
	*owned = NULL;
	*left_out = 0;
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
	const char **buf = calloc(json_array_size(t) + 1, sizeof(*buf));
	size_t i, named = 0;
	json_t *v;
	if (buf == NULL)
		return -1;
	json_array_foreach(t, i, v) {
		const char *rcpt = json_string_value(v);
		if (rcpt == NULL)
			continue;
		named++;
		if (routed_to_target(r, rcpt))
			buf[e->rcpt_count++] = rcpt;
		else
			(*left_out)++;
	}
	e->rcpts = buf;
	*owned = buf;
	return named > 0 ? 0 : -1;
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

/* Manifest key -> parsed JSON object, or NULL with a FAILED line. */
static json_t *load_manifest(struct replay *r, const char *key, const char *mkey)
{
	struct membuf b = { .max = REPLAY_MANIFEST_MAX };
	json_error_t jerr;
	char why[700];

	if (s3_get(r->s3, mkey, NULL, 0, membuf_sink, &b, why, sizeof(why)) < 0) {
		free(b.data);
		report_failure(r, key, NULL, why);
		return NULL;
	}
	json_t *m = json_loadb(b.data != NULL ? b.data : "", b.len, 0, &jerr);
	free(b.data);
	if (!json_is_object(m)) {
		snprintf(why, sizeof(why), "manifest %s: not JSON: %s", mkey, jerr.text);
		report_failure(r, key, NULL, why);
		json_decref(m);
		return NULL;
	}
	return m;
}

/* One S3 object: its selected manifests (envelopes) one at a time, its bytes fetched once
 * when the first envelope is to be delivered. 0, 1 skipped (nothing to deliver: a kept
 * journal report, or no recipient routed to the target), -1 failed. */
static int replay_s3_object(struct replay *r, struct work_item *w)
{
	const char *key = w->name;
	char why[600], mprefix[S3_KEY_MAX + 32];
	struct key_list listed = { 0 };
	const struct key_list *ml = &w->manifests;
	struct spool *spool = NULL;
	size_t failed = 0, delivered = 0;
	int ret = -1;

	if (!w->manifests_known) {
		snprintf(mprefix, sizeof(mprefix), "%s.manifests/", key);
		if (s3_list(r->s3, mprefix, keep_manifest, &listed, why, sizeof(why)) < 0) {
			report_failure(r, key, NULL, why);
			goto out;
		}
		ml = &listed;
	}
	if (ml->count == 0 && r->o.rcpt_count == 0) {
		report_failure(r, key, NULL, "no manifest (<key>.manifests/) and no --rcpt");
		goto out;
	}
	/* no manifest (with --rcpt): one envelope from an empty manifest */
	size_t envelopes = ml->count > 0 ? ml->count : 1;
	for (size_t i = 0; i < envelopes; i++) {
		json_t *m = ml->count > 0 ? load_manifest(r, key, ml->keys[i]) : json_object();
		if (m == NULL) {
			failed++;
			continue;
		}
		if (is_kept_report(m, key)) {
			json_decref(m);
			continue;
		}
		struct envelope_replay e;
		const char **owned;
		size_t left_out;
		if (envelope_from_manifest(r, m, &e, &owned, &left_out) < 0) {
			report_failure(r, key, NULL, "a manifest names no recipient");
			failed++;
			goto next;
		}
		pthread_mutex_lock(&r->lock);
		r->rcpts_left_out += left_out;
		pthread_mutex_unlock(&r->lock);
		if (e.rcpt_count == 0)
			goto next;
		if (r->o.dry_run) {
			pthread_mutex_lock(&r->lock);
			printf("would deliver %s sender=<%s> sha256=%s to %s:", key, e.sender,
			       e.sha256[0] ? e.sha256 : "(of the object)", r->dst->inst->name);
			for (size_t k = 0; k < e.rcpt_count; k++)
				printf(" <%s>", e.rcpts[k]);
			if (left_out > 0)
				printf(" (%zu not routed to %s left out)", left_out,
				       r->dst->inst->name);
			printf("\n");
			pthread_mutex_unlock(&r->lock);
			delivered++;
			goto next;
		}
		if (spool == NULL) {
			const char *error;
			spool = new_spool(r);
			if (spool == NULL ||
			    s3_get(r->s3, key, NULL, 0, spool_sink, spool, why, sizeof(why)) < 0 ||
			    spool_finish(spool, &error) < 0) {
				report_failure(r, key, NULL, spool == NULL ? "cannot create a spool" : why);
				free(owned);
				json_decref(m);
				goto out;
			}
		}
		if (e.sha256[0] == '\0')
			e.sha256 = spool_sha256_hex(spool);
		failed += deliver_envelope(r, key, spool, &e);
		delivered++;
next:
		free(owned);
		json_decref(m);
		/* --rcpt: one delivery per object, the envelope of its first manifest */
		if (r->o.rcpt_count > 0 && delivered > 0)
			break;
	}
	ret = failed > 0 ? -1 : delivered == 0 ? 1 : 0;
out:
	spool_free(&spool);
	key_list_free(&listed);
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
			if (add_item(r, file, rcpt, NULL) < 0) {
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
		int res = r->src_maildir ? replay_maildir_file(r, r->items[i].name, r->items[i].rcpt)
					 : replay_s3_object(r, &r->items[i]);
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
			if (r->o.rcpt_count == REPLAY_RCPT_OPTIONS_MAX) {
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
	/* As the daemon: never deliver as root (files a root replay stored in a Maildir would be
	 * root's, and the daemon as `user` could not use them later). The runtime (credentials
	 * files, TLS material) is already open. */
	if (privileges_drop(r.cfg, "replay") < 0) {
		rc = 77; /* EX_NOPERM, as the daemon */
		goto out;
	}

	/* the work list */
	char why[600];
	rc = 1;
	if (r.src_maildir) {
		for (size_t i = 0; i < r.o.rcpt_count; i++) {
			if (list_maildir(&r, r.o.rcpts[i]) < 0)
				goto out;
		}
	} else if (r.o.key != NULL) {
		if (add_item(&r, r.o.key, NULL, NULL) < 0)
			goto out;
	} else {
		struct listing l = { { 0 }, { 0 } };
		int listed = s3_list(r.s3, r.o.prefix != NULL ? r.o.prefix : "", keep_listed, &l,
				     why, sizeof(why));
		if (listed < 0)
			fprintf(stderr, "lmtpgw replay: cannot list %s: %s\n", r.o.from, why);
		else if ((listed = build_work_list(&r, &l)) < 0)
			fprintf(stderr, "lmtpgw replay: out of memory\n");
		key_list_free(&l.objects);
		key_list_free(&l.manifests);
		if (listed < 0)
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
	       "%zu recipients delivered, %zu failed, %zu left out (not routed to %s)",
	       r.o.dry_run ? "(dry run)" : "from", r.o.from, r.o.to, r.item_count,
	       r.item_count - r.items_failed - r.items_skipped, r.items_failed, r.items_skipped,
	       r.rcpts_ok, r.rcpts_failed, r.rcpts_left_out, r.o.to);
	if (r.orphans > 0)
		printf("; %zu manifests without their object", r.orphans);
	printf("%s\n", r.items_failed > 0 || r.orphans > 0
			       ? " (see the FAILED lines; a second run re-sends only what the target "
				 "may already have, under the same ids)" : "");
	fflush(stdout);
	rc = r.items_failed > 0 || r.rcpts_failed > 0 || r.orphans > 0 ? 1 : 0;
out:
	for (size_t i = 0; i < r.item_count; i++) {
		free(r.items[i].name);
		key_list_free(&r.items[i].manifests);
	}
	free(r.items);
	free(r.o.rcpts);
	pthread_mutex_destroy(&r.lock);
	return rc;
}
