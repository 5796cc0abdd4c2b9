/*
 * fuzz_envelope - MAIL and RCPT arguments (envelope.c) and the path parser under them
 * (address.c), on NUL-terminated text as session.c hands it over.
 *
 * Input: byte 0 chooses the entry point and the utf8 flag, the rest is the argument text
 * (copied into an exact-size buffer so ASan sees any read past the NUL).
 * Invariants: a failure carries a valid 4xx/5xx reply (status_valid); a success fills
 * NUL-terminated fields within their bounds, keeps to the 256-octet path limit, and has no
 * 8-bit octet unless utf8 was allowed; address_split_detail's base and detail fit.
 */
#include <stdbool.h>
#include <string.h>

#include "address.h"
#include "envelope.h"
#include "status.h"
#include "fuzz.h"

static void check_address(const struct address *a, bool utf8_allowed)
{
	FUZZ_CHECK(memchr(a->local, '\0', sizeof(a->local)) != NULL);
	FUZZ_CHECK(memchr(a->domain, '\0', sizeof(a->domain)) != NULL);
	if (!utf8_allowed) {
		FUZZ_CHECK(!a->utf8);
		for (const char *p = a->local; *p; p++)
			FUZZ_CHECK((unsigned char)*p < 0x80);
		for (const char *p = a->domain; *p; p++)
			FUZZ_CHECK((unsigned char)*p < 0x80);
	}
	if (a->null) {
		FUZZ_CHECK(a->local[0] == '\0' && a->domain[0] == '\0');
		return;
	}
	FUZZ_CHECK(a->local[0] != '\0');
	/* "<" local "@" domain ">" is at most 256 octets, so local@domain at most 254. */
	char buf[2 * ADDRESS_PATH_MAX];
	size_t n = address_format(a, buf, sizeof(buf));
	FUZZ_CHECK(n <= ADDRESS_PATH_MAX - 2);
	FUZZ_CHECK(strlen(buf) == n);

	char base[ADDRESS_LOCAL_MAX + 3], detail[ADDRESS_LOCAL_MAX + 3];
	static const char *const seps[] = { "+", "+-", "", "\"", "@" };
	for (size_t i = 0; i < sizeof(seps) / sizeof(seps[0]); i++) {
		address_split_detail(a, seps[i], base, sizeof(base), detail, sizeof(detail));
		FUZZ_CHECK(base[0] != '\0');
		FUZZ_CHECK(strlen(base) + (detail[0] ? strlen(detail) + 1 : 0) <= strlen(a->local));
	}
	/* Small buffers: truncated, still terminated. */
	address_split_detail(a, "+", base, 2, detail, 1);
	FUZZ_CHECK(strlen(base) <= 1 && detail[0] == '\0');
}

static void check_failure(const struct status *st)
{
	FUZZ_CHECK(status_valid(st->code, st->enhanced));
	FUZZ_CHECK(st->code >= 400 && st->code < 600);
	FUZZ_CHECK(memchr(st->text, '\0', sizeof(st->text)) != NULL);
	for (const char *p = st->text; *p; p++)
		FUZZ_CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned mode = data[0];
	bool utf8 = mode & 1;
	char *arg = malloc(size);
	if (arg == NULL)
		return 0;
	memcpy(arg, data + 1, size - 1);
	arg[size - 1] = '\0';

	struct address addr;
	struct status st;
	switch ((mode >> 1) % 3) {
	case 0: {
		struct mail_params mp;
		uint64_t max = (mode & 0x80) ? 0 : 1048576;
		if (envelope_parse_mail(arg, max, &addr, &mp, &st) < 0) {
			check_failure(&st);
		} else {
			check_address(&addr, true);
			FUZZ_CHECK(!addr.utf8 || mp.smtputf8);
			FUZZ_CHECK(memchr(mp.envid, '\0', sizeof(mp.envid)) != NULL);
			FUZZ_CHECK(mp.envid[0] == '\0' || envelope_xtext_valid(mp.envid));
			if (max && mp.has_size)
				FUZZ_CHECK(mp.size <= max);
		}
		break;
	}
	case 1: {
		struct rcpt_params rp;
		if (envelope_parse_rcpt(arg, utf8, &addr, &rp, &st) < 0) {
			check_failure(&st);
		} else {
			check_address(&addr, utf8);
			FUZZ_CHECK(!addr.null);
			FUZZ_CHECK(memchr(rp.orcpt, '\0', sizeof(rp.orcpt)) != NULL);
			if (rp.notify & ENVELOPE_NOTIFY_NEVER)
				FUZZ_CHECK(rp.notify == ENVELOPE_NOTIFY_NEVER);
		}
		break;
	}
	default: {
		size_t pos = 0;
		const char *error = NULL;
		bool allow_null = mode & 0x08, allow_pm = mode & 0x10;
		if (address_parse_path(arg, &pos, &addr, allow_null, allow_pm, utf8, &error) < 0) {
			FUZZ_CHECK(error != NULL);
		} else {
			FUZZ_CHECK(pos <= size - 1);
			FUZZ_CHECK(pos > 0 && arg[pos - 1] == '>');
			check_address(&addr, utf8);
			FUZZ_CHECK(allow_null || !addr.null);
			FUZZ_CHECK(addr.domain[0] != '\0' || addr.null || allow_pm);
		}
		(void)envelope_xtext_valid(arg);
		break;
	}
	}
	free(arg);
	return 0;
}
