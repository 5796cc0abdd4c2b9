/*
 * Tests for secret files: private modes only, lines trimmed, clear errors.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "secret.h"

static char path[64];

static void write_file(const char *text, mode_t mode)
{
	strcpy(path, "/tmp/lmtpgw-secret-XXXXXX");
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	chmod(path, mode);
}

Test(secret, reads_lines_trimmed)
{
	char err[256];
	write_file("  AKID123 \r\nsecret-key\n", 0600);
	char *a = secret_read_line(path, 0, err, sizeof(err));
	char *b = secret_read_line(path, 1, err, sizeof(err));
	cr_assert_str_eq(a, "AKID123");
	cr_assert_str_eq(b, "secret-key");
	cr_assert_null(secret_read_line(path, 2, err, sizeof(err)));
	cr_assert(strstr(err, "line 3 is missing or empty") != NULL, "%s", err);
	secret_free(&a);
	secret_free(&b);
	cr_assert_null(a);
	unlink(path);
}

Test(secret, refuses_group_or_other_access)
{
	char err[256];
	mode_t modes[] = { 0640, 0604, 0660, 0610 };
	for (size_t i = 0; i < 4; i++) {
		write_file("x\n", modes[i]);
		cr_assert_null(secret_read_file(path, err, sizeof(err)), "mode %o", modes[i]);
		cr_assert(strstr(err, "must not be accessible by group or others") != NULL, "%s", err);
		unlink(path);
	}
	write_file("x\n", 0400);
	char *ok = secret_read_file(path, err, sizeof(err));
	cr_assert_str_eq(ok, "x\n");
	secret_free(&ok);
	unlink(path);
}

Test(secret, missing_file_names_it)
{
	char err[256];
	cr_assert_null(secret_read_file("/nonexistent/lmtpgw.pw", err, sizeof(err)));
	cr_assert_str_eq(err, "/nonexistent/lmtpgw.pw: No such file or directory");
}
