/*
 * test_fuzz_regressions - inputs the fuzzers found, fed through the same entry points as the
 * fuzz targets, in the ordinary unit suite (gcc, valgrind, SANITIZE=...).
 *
 * The fuzz targets themselves are included (their LLVMFuzzerTestOneInput renamed), so a
 * regression runs exactly the code and the invariants of its target. Every seed of
 * tests/fuzz/corpus/ and every minimized crash in tests/fuzz/regressions/<target>/ is replayed;
 * a finding that needs a check of its own has its own Test below.
 *
 * Run from the top of the source tree (as `make unit` does).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fuzz_data_one(const uint8_t *data, size_t size);
int fuzz_envelope_one(const uint8_t *data, size_t size);
int fuzz_template_one(const uint8_t *data, size_t size);
int fuzz_webhook_answer_one(const uint8_t *data, size_t size);
int fuzz_session_one(const uint8_t *data, size_t size);
int fuzz_session_init(int *argc, char ***argv);

#define LLVMFuzzerTestOneInput fuzz_data_one
#include "../fuzz/fuzz_data.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_envelope_one
#include "../fuzz/fuzz_envelope.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_template_one
#include "../fuzz/fuzz_template.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_webhook_answer_one
#include "../fuzz/fuzz_webhook_answer.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_session_one
#define LLVMFuzzerInitialize fuzz_session_init
#include "../fuzz/fuzz_session.c"
#undef LLVMFuzzerTestOneInput
#undef LLVMFuzzerInitialize

typedef int fuzz_fn(const uint8_t *data, size_t size);

static unsigned replay_dir(const char *path, fuzz_fn *fn)
{
	DIR *d = opendir(path);
	struct dirent *e;
	unsigned n = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		char file[1024];
		if (e->d_name[0] == '.')
			continue;
		snprintf(file, sizeof(file), "%s/%s", path, e->d_name);
		FILE *f = fopen(file, "rb");
		cr_assert_not_null(f, "%s", file);
		uint8_t *buf = malloc(1 << 20);
		size_t len = fread(buf, 1, 1 << 20, f);
		fclose(f);
		fn(buf, len); /* aborts (a failed test) when an invariant breaks */
		free(buf);
		n++;
	}
	closedir(d);
	return n;
}

static void replay(const char *target, fuzz_fn *fn)
{
	char path[256];

	snprintf(path, sizeof(path), "tests/fuzz/corpus/%s", target);
	unsigned seeds = replay_dir(path, fn);
	snprintf(path, sizeof(path), "tests/fuzz/regressions/%s", target);
	replay_dir(path, fn);
	cr_assert_gt(seeds, 0, "no seeds for %s: run from the top of the source tree", target);
}

Test(fuzz_regressions, data_corpus)
{
	replay("fuzz_data", fuzz_data_one);
}

Test(fuzz_regressions, envelope_corpus)
{
	replay("fuzz_envelope", fuzz_envelope_one);
}

Test(fuzz_regressions, template_corpus)
{
	replay("fuzz_template", fuzz_template_one);
}

Test(fuzz_regressions, webhook_answer_corpus)
{
	replay("fuzz_webhook_answer", fuzz_webhook_answer_one);
}

static void session_cleanup(void)
{
	if (dir[0] != '\0')
		nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

Test(fuzz_regressions, session_corpus, .fini = session_cleanup)
{
	fuzz_session_init(NULL, NULL);
	replay("fuzz_session", fuzz_session_one);
}

/*
 * Found by fuzz_session (flag bit 4): a client that pipelines the end of DATA and a NOOP and
 * then half-closes (shutdown SHUT_WR: "nothing more to send", it still reads) gets no reply
 * for a recipient on a worker-pool backend (maildir here; imap, s3, webhook alike). on_event()
 * in src/session.c frees the session on BEV_EVENT_EOF even in STATE_DELIVERING, so the
 * dispatch is detached: the message IS stored, the 250 never sent, and the client retries -
 * a duplicate. Fixed: a half-closed session is kept until its replies are written.
 */
Test(fuzz_regressions, eof_while_delivering_keeps_replies, .fini = session_cleanup)
{
	static const char input[] = "\x10"
		"LHLO mx\r\n"
		"MAIL FROM:<a@example.test>\r\n"
		"RCPT TO:<keep@maildir.test>\r\n"
		"DATA\r\n"
		"x\r\n"
		".\r\n"
		"NOOP\r\n";

	fuzz_session_init(NULL, NULL);
	fuzz_session_one((const uint8_t *)input, sizeof(input) - 1);
	cr_assert_str_eq(rx.last, "250 2.0.0 OK", "last reply: \"%s\"", rx.last);
}
