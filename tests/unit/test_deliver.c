/* deliver_sysexit() / deliver_exit_status(): the enhanced status code -> sysexits(3) table of
 * `lmtpgw deliver` (src/deliver.c; docs/deliver.md has the same table). */
#include <criterion/criterion.h>
#include <sysexits.h>

#include "deliver.h"
#include "status.h"

static int ex_of(int code, const char *enhanced)
{
	struct status st;

	status_must(&st, code, enhanced, "text");
	return deliver_sysexit(&st);
}

Test(deliver, sysexit_table)
{
	cr_expect_eq(ex_of(250, "2.0.0"), EX_OK);
	cr_expect_eq(ex_of(451, "4.3.0"), EX_TEMPFAIL);
	cr_expect_eq(ex_of(452, "4.2.2"), EX_TEMPFAIL);
	cr_expect_eq(ex_of(451, "4.4.7"), EX_TEMPFAIL);
	cr_expect_eq(ex_of(550, "5.1.1"), EX_NOUSER);
	cr_expect_eq(ex_of(550, "5.1.0"), EX_NOUSER);
	cr_expect_eq(ex_of(550, "5.1.2"), EX_NOUSER);
	cr_expect_eq(ex_of(550, "5.1.6"), EX_NOUSER);
	cr_expect_eq(ex_of(501, "5.1.3"), EX_DATAERR);
	cr_expect_eq(ex_of(501, "5.1.7"), EX_DATAERR);
	cr_expect_eq(ex_of(552, "5.2.2"), EX_CANTCREAT);
	cr_expect_eq(ex_of(550, "5.2.1"), EX_CANTCREAT);
	cr_expect_eq(ex_of(552, "5.2.3"), EX_CANTCREAT);
	cr_expect_eq(ex_of(552, "5.3.4"), EX_DATAERR);
	cr_expect_eq(ex_of(554, "5.3.0"), EX_UNAVAILABLE);
	cr_expect_eq(ex_of(554, "5.4.6"), EX_UNAVAILABLE);
	cr_expect_eq(ex_of(554, "5.5.0"), EX_PROTOCOL);
	cr_expect_eq(ex_of(554, "5.6.0"), EX_DATAERR);
	cr_expect_eq(ex_of(550, "5.7.1"), EX_NOPERM);
	cr_expect_eq(ex_of(554, "5.7.0"), EX_NOPERM);
	cr_expect_eq(ex_of(550, "5.0.0"), EX_UNAVAILABLE);
	cr_expect_eq(deliver_sysexit(NULL), EX_TEMPFAIL);
}

static int exit_of(unsigned n, const char *const *codes)
{
	struct status st[8];
	const struct status *p[8];

	for (unsigned i = 0; i < n; i++) {
		if (codes[i] == NULL) {
			p[i] = NULL;
			continue;
		}
		int code = (codes[i][0] - '0') * 100 + 50;
		status_must(&st[i], code, codes[i], "text");
		p[i] = &st[i];
	}
	return deliver_exit_status(p, n);
}

Test(deliver, exit_status_of_an_invocation)
{
	cr_expect_eq(exit_of(2, (const char *[]){ "2.0.0", "2.0.0" }), EX_OK);
	/* any doubt */
	cr_expect_eq(exit_of(2, (const char *[]){ "2.0.0", "4.3.0" }), EX_TEMPFAIL);
	cr_expect_eq(exit_of(2, (const char *[]){ "5.1.1", "4.3.0" }), EX_TEMPFAIL);
	cr_expect_eq(exit_of(2, (const char *[]){ "5.1.1", NULL }), EX_TEMPFAIL);
	/* stored and refused: nothing is bounced that a retry could store */
	cr_expect_eq(exit_of(2, (const char *[]){ "2.0.0", "5.1.1" }), EX_TEMPFAIL);
	/* refused alike: that code; refused for different reasons: the generic one */
	cr_expect_eq(exit_of(2, (const char *[]){ "5.1.1", "5.1.1" }), EX_NOUSER);
	cr_expect_eq(exit_of(2, (const char *[]){ "5.1.1", "5.1.2" }), EX_NOUSER);
	cr_expect_eq(exit_of(2, (const char *[]){ "5.1.1", "5.7.1" }), EX_UNAVAILABLE);
	cr_expect_eq(exit_of(3, (const char *[]){ "5.3.4", "5.3.4", "5.6.0" }), EX_DATAERR);
	cr_expect_eq(exit_of(0, (const char *[]){ NULL }), EX_TEMPFAIL);
}
