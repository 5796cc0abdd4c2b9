/*
 * fuzz_template - template_compile and template_expand (template.c) in every escape mode.
 *
 * Input: the template text (up to the first NUL); the bytes after the NUL, when present,
 * become the value of every variable (else a fixed hostile value full of '/', '.', '%' and
 * control bytes). Invariants:
 *   - compile either fails with a reason or gives back its source;
 *   - expansion never writes past size, always NUL-terminates, and a result that fits a
 *     large buffer also fits a buffer of exactly its length + 1 but not one byte less;
 *   - TEMPLATE_PATH: a value never adds a '/' (the count of '/' equals the count with
 *     harmless values), and never makes a "." or ".." path component that the harmless
 *     expansion does not have at the same place (for a non-empty value);
 *   - TEMPLATE_URL: values add only unreserved characters and %XX.
 */
#include <stdbool.h>
#include <string.h>

#include "template.h"
#include "fuzz.h"

#define OUT_MAX 8192

static size_t count_char(const char *s, char c)
{
	size_t n = 0;

	for (; *s; s++)
		n += *s == c;
	return n;
}

/* Component k of a '/'-separated path into out (truncated at size). */
static void component(const char *path, size_t k, char *out, size_t size)
{
	const char *p = path;

	for (; k > 0 && p != NULL; k--) {
		p = strchr(p, '/');
		if (p != NULL)
			p++;
	}
	if (p == NULL) {
		out[0] = '\0';
		return;
	}
	size_t n = strcspn(p, "/");
	if (n >= size)
		n = size - 1;
	memcpy(out, p, n);
	out[n] = '\0';
}

static void set_all(struct template_vars *v, const char *value)
{
	v->local = v->detail = v->user = v->domain = v->rcpt = value;
	v->sender = v->sha256 = v->msgid = v->session = v->txid = value;
	v->received = 1700000000;
}

static int expand(const struct template *t, const struct template_vars *v,
		  enum template_escape esc, char *out, size_t size)
{
	const char *error = NULL;
	int rc = template_expand(t, v, esc, out, size, &error);

	if (rc < 0)
		FUZZ_CHECK(error != NULL && (size == 0 || out[0] == '\0'));
	else
		FUZZ_CHECK(memchr(out, '\0', size) != NULL);
	return rc;
}

static void check_exact_fit(const struct template *t, const struct template_vars *v,
			    enum template_escape esc, const char *full)
{
	size_t n = strlen(full);
	char *exact = malloc(n + 1);
	FUZZ_CHECK(expand(t, v, esc, exact, n + 1) == 0);
	FUZZ_CHECK(strcmp(exact, full) == 0);
	free(exact);
	if (n > 0) {
		char *small = malloc(n);
		FUZZ_CHECK(expand(t, v, esc, small, n) < 0);
		free(small);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	memcpy(text, data, size);
	text[size] = '\0';
	size_t tlen = strlen(text);
	const char *value = tlen < size ? text + tlen + 1 : "../a/./%2F\x01.b//..";
	bool value_has_slash = strchr(value, '/') != NULL;

	struct template *t = NULL;
	const char *error = NULL;
	if (template_compile(text, &t, &error) < 0) {
		FUZZ_CHECK(t == NULL && error != NULL);
		free(text);
		return 0;
	}
	FUZZ_CHECK(strcmp(template_source(t), text) == 0);
	(void)template_uses(t, "date");
	(void)template_uses(t, "local");
	(void)template_uses(t, "nonsense");

	struct template_vars hostile, harmless;
	set_all(&hostile, value);
	set_all(&harmless, "v");
	char *out = malloc(OUT_MAX), *ref = malloc(OUT_MAX);
	static const enum template_escape modes[] = { TEMPLATE_RAW, TEMPLATE_PATH, TEMPLATE_URL };

	for (size_t m = 0; m < 3; m++) {
		if (expand(t, &hostile, modes[m], out, OUT_MAX) < 0)
			continue;
		check_exact_fit(t, &hostile, modes[m], out);
		if (expand(t, &harmless, modes[m], ref, OUT_MAX) < 0)
			continue;
		if (modes[m] == TEMPLATE_PATH) {
			FUZZ_CHECK(count_char(out, '/') == count_char(ref, '/'));
			size_t comps = count_char(out, '/') + 1;
			for (size_t k = 0; k < comps; k++) {
				char a[OUT_MAX], b[OUT_MAX];
				component(out, k, a, sizeof(a));
				component(ref, k, b, sizeof(b));
				/* (an empty value next to a literal ".." is the template's doing) */
				if (value[0] != '\0' && (strcmp(a, ".") == 0 || strcmp(a, "..") == 0))
					FUZZ_CHECK(strcmp(a, b) == 0);
			}
			for (const char *p = out; *p; p++)
				FUZZ_CHECK((unsigned char)*p >= 0x20 || count_char(ref, *p) > 0);
		} else if (modes[m] == TEMPLATE_URL && value_has_slash) {
			FUZZ_CHECK(count_char(out, '/') == count_char(ref, '/'));
		}
	}
	/* NULL values expand to "" and empty values stand alone as "_" in PATH mode. */
	struct template_vars empty = { .received = 0 };
	if (expand(t, &empty, TEMPLATE_PATH, out, OUT_MAX) == 0)
		check_exact_fit(t, &empty, TEMPLATE_PATH, out);
	/* A tiny buffer and an unknown escape mode fail cleanly. */
	char tiny[1];
	(void)expand(t, &hostile, TEMPLATE_PATH, tiny, sizeof(tiny));
	FUZZ_CHECK(expand(t, &hostile, (enum template_escape)7, out, OUT_MAX) < 0);

	free(out);
	free(ref);
	template_free(&t);
	FUZZ_CHECK(t == NULL);
	free(text);
	return 0;
}
