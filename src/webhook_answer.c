/*
 * webhook_answer - a webhook receiver's HTTP answer to one status per recipient (see
 * webhook_answer.h). The JSON body is read with jansson, duplicates refused.
 */
#include "webhook_answer.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "address.h"
#include "log.h"

void webhook_sanitize_text(const char *in, size_t in_len, char *out, size_t max)
{
	size_t o = 0;
	bool space = false;

	if (max == 0)
		return;
	for (size_t i = 0; i < in_len; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c > ' ' && c < 0x7f) {
			if (space && o > 0) {
				if (o + 1 >= max)
					goto cut;
				out[o++] = ' ';
			}
			space = false;
			if (o + 1 >= max)
				goto cut;
			out[o++] = (char)c;
		} else {
			space = true;
		}
	}
	out[o] = '\0';
	return;
cut:
	if (max > 4) {
		o = max - 4;
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o < max ? o : max - 1] = '\0';
}

void webhook_map_http(long code, const char *retry_after, const char *text, const char *ref,
		      struct status *st)
{
	char ra[48] = "";

	if (text != NULL && text[0] == '\0')
		text = NULL;
	if (code >= 200 && code <= 299) {
		if (text != NULL)
			status_make(st, 250, "2.0.0", "%s (%s)", text, ref ? ref : "");
		else
			status_make(st, 250, "2.0.0", "accepted by webhook (%s)",
				    ref ? ref : "");
		return;
	}
	const char *def;
	switch (code) {
	case 400:
	case 404:
	case 410:
	case 422:
		def = "refused by webhook";
		status_make(st, 550, "5.0.0", "%s (HTTP %ld)", text ? text : def, code);
		return;
	case 413:
		status_make(st, 552, "5.3.4", "%s (HTTP 413)",
			    text ? text : "message too big for webhook");
		return;
	case 401:
	case 403:
		status_make(st, 451, "4.7.0", "%s (HTTP %ld)",
			    text ? text : "webhook refused our credentials", code);
		return;
	case 429:
		if (retry_after != NULL)
			webhook_sanitize_text(retry_after, strlen(retry_after), ra, sizeof(ra));
		status_make(st, 451, "4.4.5", "%s (HTTP 429%s%s)",
			    text ? text : "webhook busy", ra[0] ? ", retry after " : "", ra);
		return;
	default:
		status_make(st, 451, "4.3.0", "%s (HTTP %ld)",
			    text ? text : "webhook temporarily failed", code);
		return;
	}
}

static bool content_type_is(const char *ct, const char *type)
{
	size_t n = strlen(type);

	if (ct == NULL)
		return false;
	while (*ct == ' ')
		ct++;
	return strncasecmp(ct, type, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static bool json_content_type(const char *ct)
{
	if (ct == NULL)
		return false;
	if (content_type_is(ct, "application/json"))
		return true;
	/* application/problem+json and the like */
	const char *semi = strchr(ct, ';');
	size_t len = semi ? (size_t)(semi - ct) : strlen(ct);
	return len >= 5 && strncasecmp(ct + len - 5, "+json", 5) == 0;
}

/* One results entry -> status; -1 when invalid. */
static int map_result(json_t *entry, long http_status, const char *rcpt, const char *ref,
		      struct status *st)
{
	json_t *jcode = json_object_get(entry, "code");
	json_t *jstatus = json_object_get(entry, "status");
	json_t *jtext = json_object_get(entry, "text");
	char enh[STATUS_ENHANCED_MAX];
	char text[WEBHOOK_TEXT_MAX + 1] = "";

	if (!json_is_integer(jcode))
		return -1;
	json_int_t code = json_integer_value(jcode);
	if (code < 200 || code > 599 || (code >= 300 && code < 400))
		return -1;
	/* 2xx only when the receiver answered 2xx (design.md guarantees). */
	if (code < 300 && !(http_status >= 200 && http_status <= 299))
		return -1;
	if (jstatus == NULL || json_is_null(jstatus)) {
		snprintf(enh, sizeof(enh), "%d.0.0", (int)(code / 100));
	} else {
		if (!json_is_string(jstatus) || json_string_length(jstatus) >= sizeof(enh))
			return -1;
		snprintf(enh, sizeof(enh), "%s", json_string_value(jstatus));
	}
	if (jtext != NULL && !json_is_null(jtext)) {
		if (!json_is_string(jtext))
			return -1;
		webhook_sanitize_text(json_string_value(jtext), json_string_length(jtext), text,
				      sizeof(text));
	}
	if (!status_valid((int)code, enh))
		return -1;
	if (code < 300)
		return status_make(st, (int)code, enh, "%s (%s)",
				   text[0] ? text : "accepted by webhook", ref ? ref : "");
	return status_make(st, (int)code, enh, "%s", text[0] ? text : "refused by webhook");
}

static bool rcpt_equal(const char *given, const char *rcpt)
{
	size_t len = strlen(given);

	if (len >= 2 && given[0] == '<' && given[len - 1] == '>')
		return strlen(rcpt) == len - 2 && strncasecmp(given + 1, rcpt, len - 2) == 0;
	return strcasecmp(given, rcpt) == 0;
}

/* One recipient's verdict from every results entry naming it. The receiver may name a recipient
 * twice (a list built from two sources, a retry merged in): entries that agree on the class
 * (stored / temporary / permanent) agree on what the MTA must do, so the first one's reply is
 * used (a different code or enhanced code within the class is logged). Entries of different
 * classes contradict each other: the receiver itself does not know, and a doubt is temporary
 * (451 4.3.0), whichever came first. Any invalid entry naming the recipient is doubt too. */
static bool map_rcpt_results(const struct webhook_answer *a, json_t *results, const char *rcpt,
			     struct status *st)
{
	size_t k, found = 0;
	json_t *e;
	bool invalid = false, contradiction = false, differs = false;
	struct status first = { 0 }, other;

	json_array_foreach(results, k, e) {
		json_t *r = json_object_get(e, "rcpt");
		if (!json_is_string(r) || !rcpt_equal(json_string_value(r), rcpt))
			continue;
		struct status *into = found == 0 ? &first : &other;
		found++;
		if (map_result(e, a->http_status, rcpt, a->ref, into) < 0) {
			invalid = true;
			continue;
		}
		if (found == 1 || invalid)
			continue;
		if (status_class_of(&other) != status_class_of(&first))
			contradiction = true;
		else if (other.code != first.code || strcmp(other.enhanced, first.enhanced) != 0)
			differs = true;
	}
	char esc[LOG_ESC_SIZE];
	if (found == 0) {
		status_make(st, 451, "4.3.0",
			    "webhook answer (HTTP %ld) has no result for this recipient",
			    a->http_status);
	} else if (invalid) {
		status_make(st, 451, "4.3.0", "webhook result invalid (HTTP %ld)", a->http_status);
	} else if (contradiction) {
		log_warn("backend=%s event=webhook_results_contradict id=%s rcpt=<%s> entries=%zu",
			 a->backend ? a->backend : "-", a->ref ? a->ref : "-", log_esc(esc, rcpt),
			 found);
		status_make(st, 451, "4.3.0", "webhook results contradict each other (HTTP %ld)",
			    a->http_status);
	} else {
		if (differs)
			log_info("backend=%s event=webhook_results_differ id=%s rcpt=<%s> entries=%zu "
				 "used=\"%d %s\"",
				 a->backend ? a->backend : "-", a->ref ? a->ref : "-",
				 log_esc(esc, rcpt), found, first.code, first.enhanced);
		*st = first;
		return true;
	}
	return false;
}

static void map_results(const struct webhook_answer *a, json_t *results,
			const char *const *rcpts, size_t count, struct status *st, bool *verdict)
{
	if (!json_is_array(results)) {
		for (size_t i = 0; verdict != NULL && i < count; i++)
			verdict[i] = false;
		for (size_t i = 0; i < count; i++)
			status_make(&st[i], 451, "4.3.0", "webhook results malformed (HTTP %ld)",
				    a->http_status);
		return;
	}
	for (size_t i = 0; i < count; i++) {
		bool own = map_rcpt_results(a, results, rcpts[i], &st[i]);
		if (verdict != NULL)
			verdict[i] = own;
	}
	/* Entries for recipients this request did not carry: nothing to apply them to, but a
	 * receiver that answers for someone else is worth an admin's look. */
	size_t k;
	json_t *e;
	json_array_foreach(results, k, e) {
		json_t *r = json_object_get(e, "rcpt");
		bool ours = false;
		for (size_t i = 0; json_is_string(r) && !ours && i < count; i++)
			ours = rcpt_equal(json_string_value(r), rcpts[i]);
		if (!ours) {
			char esc[LOG_ESC_SIZE];
			log_warn("backend=%s event=webhook_result_unknown_rcpt id=%s rcpt=<%s>",
				 a->backend ? a->backend : "-", a->ref ? a->ref : "-",
				 json_is_string(r) ? log_esc(esc, json_string_value(r)) : "?");
		}
	}
}

/* verdict (NULL, or count flags): which statuses are the receiver's word on the recipient (see
 * webhook_map_verify_answer); the others are failures to get one. */
static void map_answer(const struct webhook_answer *a, const char *const *rcpts, size_t count,
		       struct status *st, bool *verdict)
{
	char text[WEBHOOK_TEXT_MAX + 1] = "";
	bool has_body = a->body != NULL && a->body_len > 0;

	if (has_body && json_content_type(a->content_type)) {
		json_error_t err;
		json_t *root = a->truncated ? NULL
					    : json_loadb(a->body, a->body_len, JSON_REJECT_DUPLICATES,
							 &err);
		if (root == NULL) {
			for (size_t i = 0; verdict != NULL && i < count; i++)
				verdict[i] = false;
			for (size_t i = 0; i < count; i++)
				status_make(&st[i], 451, "4.3.0", "webhook answer (HTTP %ld) %s",
					    a->http_status,
					    a->truncated ? "too large" : "is not valid JSON");
			return;
		}
		json_t *results = json_object_get(root, "results");
		json_t *jtext = json_object_get(root, "text");
		if (json_is_string(jtext))
			webhook_sanitize_text(json_string_value(jtext), json_string_length(jtext),
					      text, sizeof(text));
		if (results != NULL) {
			map_results(a, results, rcpts, count, st, verdict);
			json_decref(root);
			return;
		}
		json_decref(root);
	} else if (has_body && content_type_is(a->content_type, "text/plain")) {
		webhook_sanitize_text(a->body, a->body_len, text, sizeof(text));
	}
	for (size_t i = 0; i < count; i++) {
		webhook_map_http(a->http_status, a->retry_after, text, a->ref, &st[i]);
		if (verdict == NULL)
			continue;
		/* From the HTTP status alone, only an acceptance is the receiver's verdict on a
		 * recipient. A 404 or 410 may be a reverse proxy's page for a missing route, a 400
		 * or 422 a schema mismatch, a 413 a WAF (no message was sent yet): none names the
		 * recipient, so none may refuse it for good at RCPT (or be cached). A permanent
		 * refusal needs a results entry naming the recipient; here it is no verdict, a 4xx,
		 * and verify_on_error decides. 401, 403, 408, 429, 5xx keep their own 4xx. */
		verdict[i] = status_class_of(&st[i]) == STATUS_OK;
		if (status_class_of(&st[i]) == STATUS_PERMFAIL)
			status_make(&st[i], 451, "4.3.0",
				    "webhook answer (HTTP %ld) has no result for this recipient",
				    a->http_status);
	}
}

void webhook_map_answer(const struct webhook_answer *a, const char *const *rcpts, size_t count,
			struct status *st)
{
	map_answer(a, rcpts, count, st, NULL);
}

bool webhook_map_verify_answer(const struct webhook_answer *a, const char *rcpt,
			       struct status *st_r)
{
	bool verdict = false;

	map_answer(a, &rcpt, 1, st_r, &verdict);
	return verdict;
}

