/*
 * test_imapconn - the mapping of a refused APPEND to a reply (imap_map_append_failure) and the
 * one text-only case, Cyrus's bare "NO Over quota" (imap_text_means_overquota). The text match
 * must stay narrow: anything but that exact text is a plain refusal (451), never a 5xx guess.
 */
#include <criterion/criterion.h>

#include "imapconn.h"

Test(imapconn, cyrus_over_quota_text_exactly)
{
	cr_assert(imap_text_means_overquota("Over quota"));
	cr_assert(imap_text_means_overquota("over quota"));
	cr_assert(imap_text_means_overquota("Over quota \r\n"));
	cr_assert_not(imap_text_means_overquota(""));
	cr_assert_not(imap_text_means_overquota("Over quota soon"));
	cr_assert_not(imap_text_means_overquota("Not over quota"));
	cr_assert_not(imap_text_means_overquota("Over quot"));
	cr_assert_not(imap_text_means_overquota("Mailbox does not exist"));
}

Test(imapconn, append_failure_codes)
{
	struct status st;

	imap_map_append_failure("OVERQUOTA", false, &st);
	cr_assert_eq(st.code, 452);
	cr_assert_str_eq(st.enhanced, "4.2.2");
	imap_map_append_failure("OVERQUOTA", true, &st);
	cr_assert_eq(st.code, 552);
	cr_assert_str_eq(st.enhanced, "5.2.2");
	imap_map_append_failure("", true, &st);
	cr_assert_eq(st.code, 451);
	cr_assert_str_eq(st.enhanced, "4.3.0");
}
