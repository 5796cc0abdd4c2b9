/*
 * test_manifest - the envelope id that names an S3 manifest (<key>.manifests/<id>.json):
 * the same envelope always gets the same id (retries are idempotent), any other envelope of
 * the same content a different one (a later transaction adds its own manifest). The expected
 * values were computed with Python's hashlib over the encoding documented in manifest.h.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "manifest.h"

#define SHA_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define SHA_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

static void id_of(const char *sha, const char *sender, const char *const *rcpts, size_t n,
		  char id[MANIFEST_ENVELOPE_ID_SIZE])
{
	cr_assert_eq(manifest_envelope_id(sha, sender, rcpts, n, id), 0);
	cr_assert_eq(strlen(id), 64);
	cr_assert_eq(strspn(id, "0123456789abcdef"), 64, "%s", id);
}

Test(manifest, envelope_id_known_answers)
{
	const char *rcpts[] = { "bob@example.test", "alice@example.test" };
	char id[MANIFEST_ENVELOPE_ID_SIZE];

	id_of(SHA_A, "sender@remote.test", rcpts, 2, id);
	cr_assert_str_eq(id, "9e13ad3ee3f8d1837d2222afb6e5b5c1a14464b5122eb005e8aa99d88bdf137a");
	id_of("", "", NULL, 0, id);
	cr_assert_str_eq(id, "6e5bec111c94be81e7ba82923f1d02daa8233e4feb685d671dd9b8b3f4b2b293");
}

Test(manifest, envelope_id_is_a_function_of_the_envelope_set)
{
	const char *ab[] = { "a@x.test", "b@x.test" }, *ba[] = { "b@x.test", "a@x.test" };
	const char *aab[] = { "a@x.test", "b@x.test", "a@x.test" }, *a[] = { "a@x.test" };
	char one[MANIFEST_ENVELOPE_ID_SIZE], two[MANIFEST_ENVELOPE_ID_SIZE];

	/* RCPT order and a repeated RCPT do not matter: a retry gets the same id */
	id_of(SHA_A, "s@r.test", ab, 2, one);
	id_of(SHA_A, "s@r.test", ba, 2, two);
	cr_assert_str_eq(one, two);
	id_of(SHA_A, "s@r.test", aab, 3, two);
	cr_assert_str_eq(one, two);
	/* another recipient set, sender or content is another envelope */
	id_of(SHA_A, "s@r.test", a, 1, two);
	cr_assert_str_neq(one, two);
	id_of(SHA_A, "t@r.test", ab, 2, two);
	cr_assert_str_neq(one, two);
	id_of(SHA_A, "", ab, 2, two);
	cr_assert_str_neq(one, two);
	id_of(SHA_B, "s@r.test", ab, 2, two);
	cr_assert_str_neq(one, two);
}

Test(manifest, envelope_id_fields_cannot_run_into_each_other)
{
	/* length prefixes: moving bytes between sender and recipient changes the id */
	const char *r1[] = { "b@x" }, *r2[] = { "x" };
	const char *split[] = { "a@x", "b@x" }, *joined[] = { "a@x\nrcpt 3:b@x" };
	char one[MANIFEST_ENVELOPE_ID_SIZE], two[MANIFEST_ENVELOPE_ID_SIZE];

	id_of(SHA_A, "a@x", r1, 1, one);
	id_of(SHA_A, "a@xb@", r2, 1, two);
	cr_assert_str_neq(one, two);
	id_of(SHA_A, "s", split, 2, one);
	id_of(SHA_A, "s", joined, 1, two);
	cr_assert_str_neq(one, two);
}
