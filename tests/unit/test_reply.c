/* reply_policy_final(): the one place soft bounce is decided (src/reply.c). */
#include <criterion/criterion.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "reply.h"
#include "status.h"

static void check(bool global, bool backend_flag, bool with_backend, int code, const char *enh,
		  int want_code, const char *want_enh)
{
	struct config cfg;
	struct backend_instance b;
	struct status st;

	memset(&cfg, 0, sizeof(cfg));
	memset(&b, 0, sizeof(b));
	cfg.soft_bounce = global;
	b.common.soft_bounce = backend_flag;
	status_must(&st, code, enh, "text");
	reply_policy_final(&cfg, with_backend ? &b : NULL, &st);
	cr_expect_eq(st.code, want_code, "%d %s -> %d (want %d)", code, enh, st.code, want_code);
	cr_expect_str_eq(st.enhanced, want_enh);
}

Test(reply, soft_bounce_global_or_backend)
{
	check(false, false, true, 552, "5.3.4", 552, "5.3.4");
	check(true, false, false, 552, "5.3.4", 452, "4.3.4");
	check(true, false, false, 550, "5.1.1", 450, "4.1.1");
	check(true, false, false, 554, "5.4.6", 451, "4.4.6");
	check(false, true, true, 550, "5.1.1", 450, "4.1.1");
	/* a backend's own soft_bounce says nothing about a refusal without it */
	check(false, true, false, 550, "5.1.1", 550, "5.1.1");
}

Test(reply, success_and_temporary_unchanged)
{
	check(true, true, true, 250, "2.0.0", 250, "2.0.0");
	check(true, true, true, 451, "4.4.1", 451, "4.4.1");
	check(true, true, true, 452, "4.5.3", 452, "4.5.3");
}

Test(reply, protocol_errors_are_not_soft_bounced)
{
	struct config cfg;
	struct status st;

	memset(&cfg, 0, sizeof(cfg));
	cfg.soft_bounce = true;
	status_must(&st, 501, "5.1.3", "Bad recipient address syntax");
	status_mark_protocol(&st);
	reply_policy_final(&cfg, NULL, &st);
	cr_expect_eq(st.code, 501);
	/* a constructor starts every status as a refusal of mail again */
	status_must(&st, 550, "5.1.1", "x");
	cr_expect_eq(st.kind, STATUS_KIND_MAIL);
}

Test(reply, recipient_and_transaction_named_around_the_bare_text)
{
	struct config cfg;
	struct backend_instance b;
	struct status st;

	memset(&cfg, 0, sizeof(cfg));
	memset(&b, 0, sizeof(b));
	status_must(&st, 250, "2.0.0", "stored (local x)");
	reply_for_recipient(&cfg, &b, "alice@example.test", "abc.1", &st);
	cr_expect_str_eq(st.text, "<alice@example.test> stored (local x) [abc.1]");
	status_must(&st, 550, "5.1.1", "User unknown (no route)");
	reply_for_recipient(&cfg, NULL, "bob@example.test", NULL, &st);
	cr_expect_str_eq(st.text, "<bob@example.test> User unknown (no route)");
	cr_expect_eq(st.code, 550);
	/* the policy is part of it */
	b.common.soft_bounce = true;
	status_must(&st, 552, "5.2.2", "over quota");
	reply_for_recipient(&cfg, &b, "carol@example.test", "t.2", &st);
	cr_expect_eq(st.code, 452);
	cr_expect_str_eq(st.enhanced, "4.2.2");
	cr_expect_str_eq(st.text, "<carol@example.test> over quota [t.2]");
}

Test(reply, a_long_text_is_shortened_not_the_recipient_or_id)
{
	struct config cfg;
	struct status st;
	char text[400], want_end[64];

	memset(&cfg, 0, sizeof(cfg));
	memset(text, 'x', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	status_must(&st, 451, "4.3.0", "%s", text);
	reply_for_recipient(&cfg, NULL, "alice@example.test", "abc.1", &st);
	cr_expect_eq(strncmp(st.text, "<alice@example.test> xxx", 24), 0);
	snprintf(want_end, sizeof(want_end), "x [abc.1]");
	size_t n = strlen(st.text);
	cr_expect(n <= STATUS_TEXT_MAX - 1);
	cr_expect_str_eq(st.text + n - strlen(want_end), want_end);
}
