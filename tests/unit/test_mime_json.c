/* Unit tests for src/mime_json.c: headers (order, unfolding, RFC 2047, raw 8-bit), text and
 * HTML bodies with transfer encodings and charsets, attachments (names, sizes, content over the
 * limit omitted), nested messages, and messages that are not MIME at all. */
#include <criterion/criterion.h>
#include <string.h>

#include "mime_json.h"

static json_t *parse(const char *msg, size_t attachment_max)
{
	char err[200] = "";
	json_t *j = mime_json_parse(msg, strlen(msg), attachment_max, err, sizeof(err));
	cr_assert_not_null(j, "parse failed: %s", err);
	return j;
}

static const char *str(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	cr_assert(json_is_string(v), "%s is not a string", key);
	return json_string_value(v);
}

Test(mime_json, decode_header)
{
	const char *in = " =?UTF-8?B?w6l0w6k=?= and\r\n =?ISO-8859-1?Q?caf=E9?=";
	char *s = mime_json_decode_header(in, strlen(in));
	cr_assert_str_eq(s, "\xc3\xa9t\xc3\xa9 and caf\xc3\xa9");
	free(s);
	s = mime_json_decode_header(" plain\r\n\tfolded ", 16);
	cr_assert_str_eq(s, "plain\tfolded");
	free(s);
	/* raw 8-bit: UTF-8 kept, anything else read as Latin-1 */
	s = mime_json_decode_header(" J\xc3\xbcrgen", 9);
	cr_assert_str_eq(s, "J\xc3\xbcrgen");
	free(s);
	s = mime_json_decode_header(" J\xfcrgen", 8);
	cr_assert_str_eq(s, "J\xc3\xbcrgen");
	free(s);
}

Test(mime_json, simple_message)
{
	const char *msg = "Return-Path: <s@x.test>\r\n"
			  "From: Alice <alice@x.test>\r\n"
			  "To: bob@y.test\r\n"
			  "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n"
			  "X-Long: one\r\n two\r\n"
			  "\r\n"
			  "Hello\r\n";
	json_t *j = parse(msg, 1024);

	cr_assert_str_eq(str(j, "subject"), "Gr\xc3\xbc\xc3\x9f" "e");
	cr_assert_str_eq(str(j, "from"), "Alice <alice@x.test>");
	cr_assert_str_eq(str(j, "to"), "bob@y.test");
	cr_assert_str_eq(str(j, "text"), "Hello\r\n");
	json_t *h = json_object_get(j, "headers");
	cr_assert_eq(json_array_size(h), 5);
	cr_assert_str_eq(str(json_array_get(h, 0), "name"), "Return-Path");
	cr_assert_str_eq(str(json_array_get(h, 4), "name"), "X-Long");
	cr_assert_str_eq(str(json_array_get(h, 4), "value"), "one two");
	cr_assert_eq(json_array_size(json_object_get(j, "attachments")), 0);
	cr_assert_null(json_object_get(j, "html"));
	json_decref(j);
}

Test(mime_json, multipart_with_attachments)
{
	const char *msg =
		"From: a@x.test\r\n"
		"Subject: report\r\n"
		"MIME-Version: 1.0\r\n"
		"Content-Type: multipart/mixed; boundary=\"XX\"\r\n"
		"\r\n"
		"preamble\r\n"
		"--XX\r\n"
		"Content-Type: multipart/alternative; boundary=\"YY\"\r\n"
		"\r\n"
		"--YY\r\n"
		"Content-Type: text/plain; charset=iso-8859-1\r\n"
		"Content-Transfer-Encoding: quoted-printable\r\n"
		"\r\n"
		"caf=E9\r\n"
		"--YY\r\n"
		"Content-Type: text/html; charset=utf-8\r\n"
		"Content-Transfer-Encoding: base64\r\n"
		"\r\n"
		"PGI+w6k8L2I+\r\n"
		"--YY--\r\n"
		"--XX\r\n"
		"Content-Type: application/pdf; name=\"r.pdf\"\r\n"
		"Content-Disposition: attachment; filename=\"=?UTF-8?Q?r=C3=A9sum=C3=A9.pdf?=\"\r\n"
		"Content-Transfer-Encoding: base64\r\n"
		"\r\n"
		"JVBERi0xLjQK\r\n"
		"--XX\r\n"
		"Content-Type: image/png\r\n"
		"Content-Disposition: attachment; filename=big.png\r\n"
		"Content-Transfer-Encoding: base64\r\n"
		"\r\n"
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
		"--XX--\r\n";
	json_t *j = parse(msg, 20);

	cr_assert_str_eq(str(j, "text"), "caf\xc3\xa9");
	cr_assert_str_eq(str(j, "html"), "<b>\xc3\xa9</b>");
	json_t *att = json_object_get(j, "attachments");
	cr_assert_eq(json_array_size(att), 2);
	json_t *pdf = json_array_get(att, 0);
	cr_assert_str_eq(str(pdf, "filename"), "r\xc3\xa9sum\xc3\xa9.pdf");
	cr_assert_str_eq(str(pdf, "content_type"), "application/pdf");
	cr_assert_eq(json_integer_value(json_object_get(pdf, "size")), 9);
	cr_assert_str_eq(str(pdf, "content"), "JVBERi0xLjQK");
	json_t *png = json_array_get(att, 1);
	cr_assert_str_eq(str(png, "filename"), "big.png");
	cr_assert_eq(json_integer_value(json_object_get(png, "size")), 30);
	cr_assert_null(json_object_get(png, "content"));
	cr_assert(json_is_true(json_object_get(png, "content_omitted")));
	json_decref(j);
}

Test(mime_json, second_text_part_is_an_attachment_and_nested_message)
{
	const char *msg = "Content-Type: multipart/mixed; boundary=B\r\n"
			  "\r\n"
			  "--B\r\n"
			  "\r\n"
			  "first\r\n"
			  "--B\r\n"
			  "Content-Type: text/plain\r\n"
			  "\r\n"
			  "second\r\n"
			  "--B\r\n"
			  "Content-Type: message/rfc822\r\n"
			  "\r\n"
			  "Subject: inner\r\n"
			  "\r\n"
			  "inner body\r\n"
			  "--B--\r\n";
	json_t *j = parse(msg, 1 << 20);

	cr_assert_str_eq(str(j, "text"), "first");
	json_t *att = json_object_get(j, "attachments");
	cr_assert_eq(json_array_size(att), 2);
	cr_assert_str_eq(str(json_array_get(att, 0), "content_type"), "text/plain");
	cr_assert_str_eq(str(json_array_get(att, 1), "content_type"), "message/rfc822");
	json_decref(j);
}

Test(mime_json, not_mime_and_8bit_body)
{
	const char *msg = "Subject: raw\r\n\r\nJ\xfcrgen\r\n";
	json_t *j = parse(msg, 0);

	cr_assert_str_eq(str(j, "text"), "J\xc3\xbcrgen\r\n");
	json_decref(j);
	j = parse("no header at all", 0);
	json_decref(j);
}
