/*
 * address - RFC 5321 mailbox syntax (with RFC 6531 UTF-8 when allowed), bounded.
 *
 *   Path           = "<" [ A-d-l ":" ] Mailbox ">"      ; source route accepted and dropped
 *   Mailbox        = Local-part "@" ( Domain / address-literal )
 *   Local-part     = Dot-string / Quoted-string
 *   Domain         = sub-domain *("." sub-domain)
 *
 * Limits: local part 64 octets, domain 255 octets, whole path 256 octets (RFC 5321 4.5.3.1).
 * The special recipient "postmaster" without a domain is accepted (RFC 5321 4.5.1).
 * Non-ASCII (UTF-8) octets are accepted only when utf8 is true (SMTPUTF8 given on MAIL) and only
 * as well-formed UTF-8.
 *
 * Error contract: functions return 0 or -1 with a short static reason in *error_r.
 */
#ifndef LMTPGW_ADDRESS_H
#define LMTPGW_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>

#define ADDRESS_LOCAL_MAX 64
#define ADDRESS_DOMAIN_MAX 255
#define ADDRESS_PATH_MAX 256

struct address {
	/* Local part as given on the wire, quotes included when it was a Quoted-string. */
	char local[ADDRESS_LOCAL_MAX + 3];
	/* Domain, or address literal with its brackets, as given; "" for <> and for postmaster. */
	char domain[ADDRESS_DOMAIN_MAX + 1];
	bool null;       /* the null reverse-path <> */
	bool utf8;       /* contains non-ASCII octets */
};

/*
 * Parse a Path at *pos in the NUL-terminated string s (the text after "FROM:" or "TO:", with
 * optional spaces before '<' tolerated). On success *pos points just past '>'.
 * allow_null: accept "<>" (MAIL FROM only). allow_postmaster: accept "<postmaster>" (RCPT only,
 * case-insensitive). allow_utf8: accept UTF-8 in local part and domain.
 */
int address_parse_path(const char *s, size_t *pos, struct address *addr_r, bool allow_null,
		       bool allow_postmaster, bool allow_utf8, const char **error_r);

/* "local@domain" (or "local" when domain is empty, "" when null) into buf; returns length, or
 * the length that would have been needed when it does not fit (snprintf contract). */
size_t address_format(const struct address *addr, char *buf, size_t size);

/*
 * Split the local part at the first occurrence of any character of separators (e.g. "+", "+-"):
 * base gets the part before, detail the part after (empty when there is no separator, or when
 * the local part is quoted or is exactly a separator-leading string like "+foo" where base would
 * be empty: then base is the whole local part). Quotes are never split.
 */
void address_split_detail(const struct address *addr, const char *separators, char *base,
			  size_t base_size, char *detail, size_t detail_size);

#endif
