/*
 * imap_mutf7 - IMAP mailbox names in modified UTF-7 (RFC 3501 5.1.3).
 *
 * A pure function over strings, no state: the IMAP driver encodes an expanded folder template
 * with it before any imapconn call takes the name. Decoding is not needed (lmtpgw only sends
 * names).
 */
#ifndef LMTPGW_IMAP_MUTF7_H
#define LMTPGW_IMAP_MUTF7_H

#include <stddef.h>

/* Encode a UTF-8 mailbox name in modified UTF-7 (RFC 3501 5.1.3): printable US-ASCII stands
 * for itself ("&" becomes "&-"), anything else goes as UTF-16 in modified base64 between "&"
 * and "-". 0, or -1 when utf8 is not well-formed UTF-8 or the result (with its NUL) does not
 * fit out_size. */
int imap_mutf7_encode(const char *utf8, char *out, size_t out_size);

#endif
