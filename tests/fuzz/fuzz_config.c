/*
 * fuzz_config - config_load (config.c, libconfig, every backend's key table and open(), the
 * router) on arbitrary file content, then config_print and config_unref.
 *
 * Input: the file content. Invariants: a refused file gives a non-empty "file..." message;
 * a loaded one prints, and what it prints loads again and prints the same (the round trip
 * `lmtpgw -n` promises). Files go to a private temporary directory made at start-up.
 */
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "runtime.h"
#include "log.h"
#include "fuzz.h"

static char dir[64];
static char path[128], path2[128];
static FILE *devnull;

static void remove_files(void)
{
	unlink(path);
	unlink(path2);
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_init("fuzz_config", true, LOG_LEVEL_ERROR);
	/* An imap or https backend loads the system CA store at open: 0.2 s per load under ASan.
	 * Nothing here verifies a peer, so point OpenSSL at an empty store. */
	setenv("SSL_CERT_FILE", "/dev/null", 1);
	setenv("SSL_CERT_DIR", "/nonexistent", 1);
	snprintf(dir, sizeof(dir), "/tmp/lmtpgw-fuzz-config-XXXXXX");
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(remove_files);
	snprintf(path, sizeof(path), "%s/f.conf", dir);
	snprintf(path2, sizeof(path2), "%s/g.conf", dir);
	devnull = fopen("/dev/null", "w");
	if (devnull == NULL)
		abort();
	return 0;
}

static void write_file(const char *p, const void *data, size_t size)
{
	FILE *f = fopen(p, "w");

	if (f == NULL)
		abort();
	if (size > 0 && fwrite(data, 1, size, f) != size)
		abort();
	fclose(f);
}

static char *print_to_string(const struct config *cfg, size_t *len_r)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		abort();
	config_print(f, cfg);
	fclose(f);
	*len_r = len;
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char error[1024] = "";

	write_file(path, data, size);
	struct config *cfg = config_load(path, error, sizeof(error));
	if (cfg == NULL) {
		FUZZ_CHECK(error[0] != '\0');
		FUZZ_CHECK(strncmp(error, path, strlen(path)) == 0);
		return 0;
	}
	/* Open the drivers too, as `lmtpgw check` does: their open() parses settings. */
	struct runtime *rt = runtime_open(config_ref(cfg), NULL, error, sizeof(error));
	if (rt == NULL)
		FUZZ_CHECK(strncmp(error, path, strlen(path)) == 0);
	runtime_unref(&rt);
	config_print(devnull, cfg);
	size_t len1;
	char *text1 = print_to_string(cfg, &len1);
	config_unref(&cfg);
	FUZZ_CHECK(cfg == NULL);

	write_file(path2, text1, len1);
	struct config *again = config_load(path2, error, sizeof(error));
	if (again == NULL) {
		fprintf(stderr, "printed configuration does not load again: %s\n--\n%s--\n", error,
			text1);
		abort();
	}
	size_t len2;
	char *text2 = print_to_string(again, &len2);
	(void)len2;
	config_unref(&again);
	/* The path differs (in the first line, a comment); everything else is the same. */
	const char *body1 = strchr(text1, '\n'), *body2 = strchr(text2, '\n');
	FUZZ_CHECK(body1 != NULL && body2 != NULL);
	if (strcmp(body1, body2) != 0) {
		fprintf(stderr, "config_print not stable:\n--\n%s--\n%s--\n", text1, text2);
		abort();
	}
	free(text1);
	free(text2);
	return 0;
}
