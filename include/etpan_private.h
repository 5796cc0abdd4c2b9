/*
 * etpan_private - the libetpan session internals that an IMAP command written by hand needs.
 *
 * libetpan 1.9 has neither LITERAL+ (RFC 7888) nor MULTIAPPEND (RFC 3502), so imapconn writes
 * that APPEND itself on libetpan's session and lets libetpan parse only the answer. Doing so
 * takes the session's tag counter, its raw response reader and parser, the response
 * information it stores for the last command, and one function that libetpan exports but
 * declares only in its private mailimap_sender.h. This module is the one place that reaches
 * into them, so a libetpan upgrade is checked here and nowhere else.
 *
 * Checked against libetpan 1.9.4 (Debian 12, libetpan_version.h: 1.9, API 25); the build fails
 * on another major.minor version (see etpan_private.c and docs/backends/imap.md).
 * Error contract: 0/-1 for writes (a failed write leaves the session unusable: close it).
 */
#ifndef LMTPGW_ETPAN_PRIVATE_H
#define LMTPGW_ETPAN_PRIVATE_H

#include <stddef.h>

#include <libetpan/libetpan.h>

/* Begin a command: the session's next tag and a space, exactly as libetpan's own commands do,
 * so that the tagged answer is matched by etpan_read_tagged(). */
int etpan_command_begin(mailimap *imap);

/* Write command bytes as they are (buffered in the session's stream). */
int etpan_command_write(mailimap *imap, const void *data, size_t len);

/* Write a literal's content with every bare CR and LF made CRLF, as libetpan does for its own
 * APPEND; etpan_literal_crlf_size() is the octet count that announces it. */
int etpan_literal_write_crlf(mailimap *imap, const char *data, size_t len);
size_t etpan_literal_crlf_size(const char *data, size_t len);

/* Send what the stream buffered. */
int etpan_command_flush(mailimap *imap);

enum etpan_tagged {
	ETPAN_TAGGED_OK,
	ETPAN_TAGGED_NO,
	ETPAN_TAGGED_BAD,           /* a tagged BAD, or a tagged line with another tag: libetpan
	                             * does not tell them apart */
	ETPAN_TAGGED_LOST,          /* stream error, timeout, unparsable answer, BYE, no memory */
};

/* Read the answer to the command begun with etpan_command_begin() up to its tagged line.
 * Untagged responses on the way are stored in the session as for libetpan's own commands; the
 * tagged line's response code and text are then etpan_response_info() and
 * etpan_response_text(). */
enum etpan_tagged etpan_read_tagged(mailimap *imap);

/* The same in two steps, for a command whose server may first ask for more (a SASL
 * continuation "+ ..." that libetpan's parser would wait past): read one response line (with
 * its literals) into the session's buffer and return it (NULL: stream lost); when it is not a
 * continuation, parse the answer it begins up to its tagged line. */
const char *etpan_read_line(mailimap *imap);
enum etpan_tagged etpan_parse_tagged(mailimap *imap);

/* After an AUTHENTICATE written by hand succeeded: the session's state as after libetpan's own
 * login, so that its commands (SELECT, APPEND, ...) are allowed. */
void etpan_set_authenticated(mailimap *imap);

/* The response information of the last command (response code atom, [TRYCREATE], extension
 * codes such as APPENDUID), or NULL. */
const struct mailimap_response_info *etpan_response_info(const mailimap *imap);

/* The text of the last command's tagged answer, or "". */
const char *etpan_response_text(const mailimap *imap);

#endif
