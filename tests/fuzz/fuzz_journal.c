/*
 * fuzz_journal - the Exchange journal report parser (journal_is_report, journal_parse,
 * journal_json in src/journal.c), which reads the mapped spool of whatever a sender put on a
 * journal_reports route.
 *
 * Input: the message, copied into a buffer of exactly its size (a read past the end is an ASan
 * report). Invariants: a parse that succeeds gives an original inside the input, at least one
 * recipient, every string UTF-8 (journal_json serializes: jansson refuses anything else) and
 * bounded by JOURNAL_VALUE_MAX; a refusal gives a reason; parsing twice gives the same window.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "journal.h"
#include "utf8.h"
#include "fuzz.h"

static void check_text(const char *s)
{
	if (s == NULL)
		return;
	size_t len = strlen(s);
	FUZZ_CHECK(len <= JOURNAL_VALUE_MAX * 4); /* UTF-8 of a bounded Latin-1 value at most */
	FUZZ_CHECK(utf8_valid(s, len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size ? size : 1);
	if (copy == NULL)
		return 0;
	memcpy(copy, data, size);

	(void)journal_is_report(copy, size);
	struct journal_report r;
	const char *error = NULL;
	if (journal_parse(copy, size, &r, &error) < 0) {
		FUZZ_CHECK(error != NULL && error[0] != '\0');
		free(copy);
		return 0;
	}
	FUZZ_CHECK(r.original_offset <= size && r.original_length <= size - r.original_offset);
	FUZZ_CHECK(r.rcpt_count > 0 && r.rcpt_count <= JOURNAL_RECIPIENTS_MAX);
	check_text(r.sender);
	check_text(r.subject);
	check_text(r.message_id);
	check_text(r.on_behalf_of);
	for (size_t i = 0; i < r.rcpt_count; i++) {
		FUZZ_CHECK(r.rcpts[i].address != NULL);
		check_text(r.rcpts[i].address);
		check_text(r.rcpts[i].expanded_from);
		check_text(r.rcpts[i].forwarded_from);
	}
	json_t *doc = journal_json(&r);
	FUZZ_CHECK(doc != NULL);
	char *text = json_dumps(doc, JSON_COMPACT);
	FUZZ_CHECK(text != NULL);
	free(text);
	json_decref(doc);
	char bare[JOURNAL_VALUE_MAX + 1];
	journal_message_id_bare(&r, bare, sizeof(bare));

	struct journal_report again;
	FUZZ_CHECK(journal_parse(copy, size, &again, &error) == 0);
	FUZZ_CHECK(again.original_offset == r.original_offset &&
		   again.original_length == r.original_length && again.rcpt_count == r.rcpt_count);
	journal_report_free(&again);
	journal_report_free(&r);
	free(copy);
	return 0;
}
