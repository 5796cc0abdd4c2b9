/*
 * envelope - MAIL and RCPT arguments: the path and the ESMTP parameters (see envelope.h).
 *
 * Owns: nothing; fills the caller's structs. No allocation.
 * Checks run in a fixed order so the reply to a bad command is predictable:
 *   1. "FROM:" / "TO:" present (case-insensitive; one SP after the colon is tolerated,
 *      as many clients send it)                         else 501 5.5.4
 *   2. the path                                         else 501 5.1.7 (MAIL) / 501 5.1.3 (RCPT)
 *   3. each parameter, left to right: syntax            else 501 5.5.4
 *      known keyword                                    else 555 5.5.4
 *      not seen before                                  else 501 5.5.4
 *      valid value                                      else 501 5.5.4
 *   4. a non-ASCII address needs SMTPUTF8 (RFC 6531 3.5) else 553 5.6.7
 *   5. MAIL only: SIZE within the server's limit        else 552 5.3.4
 *
 * Error contract: 0, or -1 with the reply in *st_r. The outputs are zeroed first.
 */
#include "envelope.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define KEYWORD_MAX 64   /* far above any registered keyword; bounds what we echo back */
#define SIZE_DIGITS_MAX 20 /* RFC 1870: size-value = 1*20DIGIT */

struct param {
	const char *keyword; /* not NUL-terminated */
	size_t keyword_len;
	const char *value;   /* NULL when there is no "=" */
	size_t value_len;
};

static bool is_alnum(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

static bool keyword_is(const struct param *p, const char *name)
{
	return p->keyword_len == strlen(name) && strncasecmp(p->keyword, name, p->keyword_len) == 0;
}

static bool value_is(const struct param *p, const char *name)
{
	return p->value_len == strlen(name) && strncasecmp(p->value, name, p->value_len) == 0;
}

/*
 *   esmtp-param   = esmtp-keyword ["=" esmtp-value]
 *   esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
 *   esmtp-value   = 1*(%d33-60 / %d62-126)   ; any CHAR excluding "=", SP, and control chars
 * Reads one parameter at *pos (which is at a non-space) up to the next SP or the end.
 */
static int next_param(const char *arg, size_t *pos, struct param *p_r)
{
	size_t i = *pos;

	p_r->keyword = arg + i;
	if (!is_alnum((unsigned char)arg[i]))
		return -1;
	while (is_alnum((unsigned char)arg[i]) || arg[i] == '-')
		i++;
	p_r->keyword_len = (size_t)(arg + i - p_r->keyword);
	p_r->value = NULL;
	p_r->value_len = 0;
	if (arg[i] == '=') {
		i++;
		p_r->value = arg + i;
		while ((unsigned char)arg[i] >= 33 && (unsigned char)arg[i] <= 126 && arg[i] != '=')
			i++;
		p_r->value_len = (size_t)(arg + i - p_r->value);
		if (p_r->value_len == 0)
			return -1;
	}
	if (arg[i] != ' ' && arg[i] != '\0')
		return -1;
	*pos = i;
	return 0;
}

/* After a path: end of text, or one or more SP then parameters. Returns -1 on anything else. */
static int skip_spaces_after_path(const char *arg, size_t *pos)
{
	if (arg[*pos] != ' ' && arg[*pos] != '\0')
		return -1;
	while (arg[*pos] == ' ')
		(*pos)++;
	return 0;
}

/* "FROM:" / "TO:" then at most one SP before '<'; returns the offset of '<' candidate or -1. */
static int expect_prefix(const char *arg, const char *prefix, size_t *pos_r)
{
	size_t len = strlen(prefix);

	if (arg == NULL || strncasecmp(arg, prefix, len) != 0)
		return -1;
	if (arg[len] == ' ')
		len++;
	*pos_r = len;
	return 0;
}

/* The keyword as it may be echoed in a reply (status_make replaces anything unprintable). */
static int echo_len(const struct param *p)
{
	return (int)(p->keyword_len < KEYWORD_MAX ? p->keyword_len : KEYWORD_MAX);
}

/*
 *   size-value = 1*20DIGIT                                    ; RFC 1870
 * Returns 0 with the value, 1 when the digits overflow uint64_t (too big by any measure),
 * -1 on bad syntax.
 */
static int parse_size(const struct param *p, uint64_t *size_r)
{
	uint64_t size = 0;
	bool overflow = false;

	if (p->value == NULL || p->value_len == 0 || p->value_len > SIZE_DIGITS_MAX)
		return -1;
	for (size_t i = 0; i < p->value_len; i++) {
		unsigned digit = (unsigned)(p->value[i] - '0');

		if (p->value[i] < '0' || p->value[i] > '9')
			return -1;
		if (size > (UINT64_MAX - digit) / 10)
			overflow = true;
		else
			size = size * 10 + digit;
	}
	*size_r = overflow ? UINT64_MAX : size;
	return overflow ? 1 : 0;
}

bool envelope_xtext_valid(const char *s)
{
	if (s == NULL)
		return false;
	for (size_t i = 0; s[i] != '\0'; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '+') {
			/* hexchar = "+" 2HEXDIG; RFC 3461 says upper case, lower case is tolerated */
			for (int k = 1; k <= 2; k++) {
				unsigned char h = (unsigned char)s[i + (size_t)k];

				if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F') ||
				      (h >= 'a' && h <= 'f')))
					return false;
			}
			i += 2;
		} else if (ch < 33 || ch > 126 || ch == '=') {
			return false;
		}
	}
	return true;
}

/* xtext validation for a value that is not NUL-terminated. */
static bool xtext_valid_n(const char *s, size_t len, char *copy, size_t copy_size)
{
	if (len >= copy_size)
		return false;
	memcpy(copy, s, len);
	copy[len] = '\0';
	return envelope_xtext_valid(copy);
}

static int bad_value(struct status *st_r, const struct param *p)
{
	status_must(st_r, 501, "5.5.4", "Bad value for parameter %.*s", echo_len(p), p->keyword);
	return -1;
}

/* Common loop over the parameters: syntax, duplicate and unknown checks; known ones go to the
 * handler, which returns -1 with the reply already set. */
#define PARAM_SLOTS 8

struct param_table {
	const char *const *names;   /* known keywords, index = slot */
	size_t count;
};

static int find_keyword(const struct param_table *table, const struct param *p)
{
	for (size_t i = 0; i < table->count; i++) {
		if (keyword_is(p, table->names[i]))
			return (int)i;
	}
	return -1;
}

static int next_known_param(const char *arg, size_t *pos, const struct param_table *table,
			    bool seen[PARAM_SLOTS], struct param *p_r, int *slot_r,
			    struct status *st_r)
{
	int slot;

	if (next_param(arg, pos, p_r) < 0) {
		status_must(st_r, 501, "5.5.4", "Bad parameter syntax");
		return -1;
	}
	if ((slot = find_keyword(table, p_r)) < 0) {
		status_must(st_r, 555, "5.5.4", "Unsupported parameter %.*s", echo_len(p_r),
			    p_r->keyword);
		return -1;
	}
	if (seen[slot]) {
		status_must(st_r, 501, "5.5.4", "Duplicate parameter %.*s", echo_len(p_r),
			    p_r->keyword);
		return -1;
	}
	seen[slot] = true;
	*slot_r = slot;
	return 0;
}

enum mail_keyword { MAIL_SIZE, MAIL_BODY, MAIL_SMTPUTF8, MAIL_RET, MAIL_ENVID, MAIL_KEYWORDS };

static const char *const mail_keywords[MAIL_KEYWORDS] = {
	[MAIL_SIZE] = "SIZE", [MAIL_BODY] = "BODY", [MAIL_SMTPUTF8] = "SMTPUTF8",
	[MAIL_RET] = "RET", [MAIL_ENVID] = "ENVID",
};

static int apply_mail_param(const struct param *p, enum mail_keyword keyword,
			    struct mail_params *params, bool *size_overflow, struct status *st_r)
{
	char envid[ENVELOPE_ENVID_MAX + 1];

	if (keyword == MAIL_SMTPUTF8) {
		/* RFC 6531 3.4: SMTPUTF8 takes no value */
		if (p->value != NULL)
			return bad_value(st_r, p);
		params->smtputf8 = true;
		return 0;
	}
	if (p->value == NULL)
		return bad_value(st_r, p);
	switch (keyword) {
	case MAIL_SIZE:
		switch (parse_size(p, &params->size)) {
		case -1:
			return bad_value(st_r, p);
		case 1:
			*size_overflow = true;
			break;
		default:
			break;
		}
		params->has_size = true;
		return 0;
	case MAIL_BODY:
		/* RFC 6152: 7BIT / 8BITMIME; RFC 3030: BINARYMIME */
		if (value_is(p, "7BIT"))
			params->body = BODY_7BIT;
		else if (value_is(p, "8BITMIME"))
			params->body = BODY_8BITMIME;
		else if (value_is(p, "BINARYMIME"))
			params->body = BODY_BINARYMIME;
		else
			return bad_value(st_r, p);
		return 0;
	case MAIL_RET:
		/* RFC 3461 4.3: ret-value = "FULL" / "HDRS" */
		if (value_is(p, "FULL"))
			params->ret = RET_FULL;
		else if (value_is(p, "HDRS"))
			params->ret = RET_HDRS;
		else
			return bad_value(st_r, p);
		return 0;
	case MAIL_ENVID:
		/* RFC 3461 4.4: xtext, at most 100 characters */
		if (p->value_len > ENVELOPE_ENVID_MAX ||
		    !xtext_valid_n(p->value, p->value_len, envid, sizeof(envid)))
			return bad_value(st_r, p);
		memcpy(params->envid, envid, p->value_len + 1);
		return 0;
	default:
		return bad_value(st_r, p);
	}
}

static int parse_mail(const char *arg, uint64_t max_size, struct address *from_r,
		      struct mail_params *params_r, struct status *st_r)
{
	static const struct param_table table = { mail_keywords, MAIL_KEYWORDS };
	bool seen[PARAM_SLOTS] = { false };
	bool size_overflow = false;
	const char *error;
	size_t pos;

	memset(from_r, 0, sizeof(*from_r));
	memset(params_r, 0, sizeof(*params_r));
	if (expect_prefix(arg, "FROM:", &pos) < 0) {
		status_must(st_r, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
		return -1;
	}
	if (arg[pos] != '<') {
		status_must(st_r, 501, "5.1.7", "Bad sender address syntax");
		return -1;
	}
	if (address_parse_path(arg, &pos, from_r, true, false, true, &error) < 0) {
		status_must(st_r, 501, "5.1.7", "Bad sender address syntax (%s)", error);
		return -1;
	}
	if (skip_spaces_after_path(arg, &pos) < 0) {
		status_must(st_r, 501, "5.1.7", "Bad sender address syntax");
		return -1;
	}
	while (arg[pos] != '\0') {
		struct param p;
		int slot;

		if (next_known_param(arg, &pos, &table, seen, &p, &slot, st_r) < 0 ||
		    apply_mail_param(&p, (enum mail_keyword)slot, params_r, &size_overflow,
				     st_r) < 0)
			return -1;
		while (arg[pos] == ' ')
			pos++;
	}
	if (from_r->utf8 && !params_r->smtputf8) {
		status_must(st_r, 553, "5.6.7", "Non-ASCII sender address requires SMTPUTF8");
		return -1;
	}
	/* RFC 1870 6.1: a declared size above the fixed limit gets 552. A SIZE too large for
	 * 64 bits is refused even without a configured limit: nothing can store it. */
	if (size_overflow || (max_size != 0 && params_r->has_size && params_r->size > max_size)) {
		status_must(st_r, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		return -1;
	}
	return 0;
}

enum rcpt_keyword { RCPT_NOTIFY, RCPT_ORCPT, RCPT_KEYWORDS };

static const char *const rcpt_keywords[RCPT_KEYWORDS] = {
	[RCPT_NOTIFY] = "NOTIFY", [RCPT_ORCPT] = "ORCPT",
};

/*
 *   notify-esmtp-value  = "NEVER" / 1#notify-list-element     ; RFC 3461 4.1
 *   notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"
 * A repeated element is harmless and tolerated; NEVER must stand alone.
 */
static int parse_notify(const struct param *p, unsigned *notify_r)
{
	unsigned notify = 0;
	size_t start = 0;

	for (;;) {
		size_t end = start;
		struct param element = { .value = p->value + start };

		while (end < p->value_len && p->value[end] != ',')
			end++;
		element.value_len = end - start;
		if (value_is(&element, "NEVER"))
			notify |= ENVELOPE_NOTIFY_NEVER;
		else if (value_is(&element, "SUCCESS"))
			notify |= ENVELOPE_NOTIFY_SUCCESS;
		else if (value_is(&element, "FAILURE"))
			notify |= ENVELOPE_NOTIFY_FAILURE;
		else if (value_is(&element, "DELAY"))
			notify |= ENVELOPE_NOTIFY_DELAY;
		else
			return -1;
		if (end == p->value_len)
			break;
		start = end + 1;
	}
	if ((notify & ENVELOPE_NOTIFY_NEVER) != 0 && notify != ENVELOPE_NOTIFY_NEVER)
		return -1;
	*notify_r = notify;
	return 0;
}

/*
 *   orcpt-parameter = "ORCPT=" original-recipient-address      ; RFC 3461 4.2
 *   original-recipient-address = addr-type ";" xtext
 *   addr-type       = atom                                       ; RFC 5322 atom, without CFWS
 */
static bool orcpt_valid(const struct param *p, char *copy, size_t copy_size)
{
	const char *semicolon = memchr(p->value, ';', p->value_len);
	size_t type_len;

	if (semicolon == NULL || p->value_len > ENVELOPE_ORCPT_MAX)
		return false;
	type_len = (size_t)(semicolon - p->value);
	if (type_len == 0)
		return false;
	for (size_t i = 0; i < type_len; i++) {
		unsigned char ch = (unsigned char)p->value[i];

		if (!is_alnum(ch) && strchr("!#$%&'*+-/=?^_`{|}~", ch) == NULL)
			return false;
	}
	if (!xtext_valid_n(semicolon + 1, p->value_len - type_len - 1, copy, copy_size))
		return false;
	memcpy(copy, p->value, p->value_len);
	copy[p->value_len] = '\0';
	return true;
}

static int parse_rcpt(const char *arg, bool utf8, struct address *to_r,
		      struct rcpt_params *params_r, struct status *st_r)
{
	static const struct param_table table = { rcpt_keywords, RCPT_KEYWORDS };
	bool seen[PARAM_SLOTS] = { false };
	const char *error;
	size_t pos;

	memset(to_r, 0, sizeof(*to_r));
	memset(params_r, 0, sizeof(*params_r));
	if (expect_prefix(arg, "TO:", &pos) < 0) {
		status_must(st_r, 501, "5.5.4", "Syntax: RCPT TO:<address>");
		return -1;
	}
	if (arg[pos] != '<') {
		status_must(st_r, 501, "5.1.3", "Bad recipient address syntax");
		return -1;
	}
	if (address_parse_path(arg, &pos, to_r, false, true, true, &error) < 0) {
		status_must(st_r, 501, "5.1.3", "Bad recipient address syntax (%s)", error);
		return -1;
	}
	if (skip_spaces_after_path(arg, &pos) < 0) {
		status_must(st_r, 501, "5.1.3", "Bad recipient address syntax");
		return -1;
	}
	while (arg[pos] != '\0') {
		struct param p;
		int slot;

		if (next_known_param(arg, &pos, &table, seen, &p, &slot, st_r) < 0)
			return -1;
		if (p.value == NULL)
			return bad_value(st_r, &p);
		if (slot == RCPT_NOTIFY) {
			if (parse_notify(&p, &params_r->notify) < 0)
				return bad_value(st_r, &p);
		} else if (!orcpt_valid(&p, params_r->orcpt, sizeof(params_r->orcpt))) {
			params_r->orcpt[0] = '\0';
			return bad_value(st_r, &p);
		}
		while (arg[pos] == ' ')
			pos++;
	}
	/* RFC 6531 3.5: a non-ASCII address in a transaction without SMTPUTF8 */
	if (to_r->utf8 && !utf8) {
		status_must(st_r, 553, "5.6.7", "Non-ASCII recipient address requires SMTPUTF8");
		return -1;
	}
	return 0;
}

/* Every refusal of the parsers is about the command's syntax, except a SIZE= over the limit,
 * which refuses the mail (552 5.3.4) and so may be soft-bounced (reply.h). */
static int mark_syntax_error(int ret, struct status *st_r)
{
	if (ret < 0 && st_r->code != 552)
		status_mark_protocol(st_r);
	return ret;
}

int envelope_parse_mail(const char *arg, uint64_t max_size, struct address *from_r,
			struct mail_params *params_r, struct status *st_r)
{
	return mark_syntax_error(parse_mail(arg, max_size, from_r, params_r, st_r), st_r);
}

int envelope_parse_rcpt(const char *arg, bool utf8, struct address *to_r,
			struct rcpt_params *params_r, struct status *st_r)
{
	return mark_syntax_error(parse_rcpt(arg, utf8, to_r, params_r, st_r), st_r);
}
