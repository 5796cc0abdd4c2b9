/*
 * secret - passwords, keys and tokens read from files, the one way every backend reads them.
 */
#include "secret.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SECRET_FILE_MAX (64 * 1024)

char *secret_read_file(const char *path, char *error_r, size_t error_size)
{
	struct stat sb;
	FILE *f = fopen(path, "re");

	if (f == NULL) {
		snprintf(error_r, error_size, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &sb) < 0 || (sb.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
		snprintf(error_r, error_size,
			 "%s: secret file must not be accessible by group or others (chmod 600)",
			 path);
		fclose(f);
		return NULL;
	}
	if (sb.st_size > SECRET_FILE_MAX) {
		snprintf(error_r, error_size, "%s: too large for a secret file", path);
		fclose(f);
		return NULL;
	}
	size_t cap = (size_t)sb.st_size + 1;
	char *buf = calloc(1, cap + 1);
	size_t n = buf ? fread(buf, 1, cap, f) : 0;
	fclose(f);
	if (buf == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return NULL;
	}
	buf[n] = '\0';
	return buf;
}

char *secret_read_line(const char *path, int line, char *error_r, size_t error_size)
{
	char *text = secret_read_file(path, error_r, error_size);
	char *result = NULL;

	if (text == NULL)
		return NULL;
	char *p = text;
	for (int i = 0; i < line && p != NULL; i++) {
		p = strchr(p, '\n');
		if (p != NULL)
			p++;
	}
	if (p != NULL) {
		p += strspn(p, " \t");
		size_t n = strcspn(p, "\r\n");
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n > 0)
			result = strndup(p, n);
	}
	secret_free(&text);
	if (result == NULL)
		snprintf(error_r, error_size, "%s: line %d is missing or empty", path, line + 1);
	return result;
}

void secret_free(char **secret)
{
	if (*secret != NULL) {
		explicit_bzero(*secret, strlen(*secret));
		free(*secret);
		*secret = NULL;
	}
}

void secret_free_bytes(void *p, size_t len)
{
	if (p != NULL) {
		explicit_bzero(p, len);
		free(p);
	}
}
