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
