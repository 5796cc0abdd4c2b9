/*
 * address - RFC 5321 Path and Mailbox parsing, bounded, into fixed buffers (see address.h).
 *
 * Owns: nothing; writes only the caller's struct address. No allocation.
 * Limits (RFC 5321 4.5.3.1): a local part of at most 64 octets as given on the wire (for a
 * Quoted-string, the two enclosing DQUOTEs are not counted, quoted-pair backslashes are), a
 * domain or address literal of at most 255 octets, labels of at most 63 octets, and a whole
 * path, from "<" to ">" inclusive and source route included, of at most 256 octets.
 * UTF-8 (RFC 6531) is accepted in the local part and in domain labels only when the caller
 * allows it, and only well-formed: no overlong forms, no surrogates, nothing above U+10FFFF.
 * U-labels are not checked against IDNA2008 beyond that.
 *
 * Error contract: 0, or -1 with a short static reason in *error_r; *addr_r is then undefined.
 */
#include "address.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "format.h"
#include "utf8.h"

#define LABEL_MAX 63

struct cursor {
	const unsigned char *s;
	size_t pos;
	bool allow_utf8;
	bool saw_utf8;
	const char *error;
};

static int fail(struct cursor *c, const char *reason)
{
	c->error = reason;
	return -1;
}

static bool is_alpha(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static bool is_digit(unsigned char ch)
{
	return ch >= '0' && ch <= '9';
}

static bool is_let_dig(unsigned char ch)
{
	return is_alpha(ch) || is_digit(ch);
}

/* atext of RFC 5322 3.2.3 (ASCII part). */
static bool is_atext(unsigned char ch)
{
	return is_let_dig(ch) || (ch != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL);
}

/* Accept a non-ASCII sequence at the cursor when allowed; returns its length or 0 (error set). */
static size_t take_utf8(struct cursor *c)
{
	size_t len;

	if (!c->allow_utf8) {
		fail(c, "non-ASCII character in address");
		return 0;
	}
	len = utf8_sequence_length(c->s + c->pos, strnlen((const char *)c->s + c->pos, 4));
	if (len == 0) {
		fail(c, "malformed UTF-8 in address");
		return 0;
	}
	c->saw_utf8 = true;
	return len;
}

/* Append n octets at the cursor to out (bounded by max octets), advancing the cursor. */
static int append(struct cursor *c, char *out, size_t *out_len, size_t max, size_t n,
		  const char *too_long)
{
	if (*out_len + n > max)
		return fail(c, too_long);
	memcpy(out + *out_len, c->s + c->pos, n);
	*out_len += n;
	c->pos += n;
	return 0;
}

/*
 *   Dot-string = Atom *("."  Atom)
 *   Atom       = 1*atext                    ; RFC 6531: atext =/ UTF8-non-ascii
 */
static int parse_dot_string(struct cursor *c, char *out, size_t *out_len)
{
	size_t atom_len = 0;

	for (;;) {
		unsigned char ch = c->s[c->pos];
		size_t n = 1;

		if (ch >= 0x80) {
			if ((n = take_utf8(c)) == 0)
				return -1;
		} else if (ch == '.') {
			if (atom_len == 0)
				return fail(c, "empty atom in local part");
			atom_len = 0;
		} else if (!is_atext(ch)) {
			break;
		}
		if (append(c, out, out_len, ADDRESS_LOCAL_MAX, n, "local part too long") < 0)
			return -1;
		if (ch != '.')
			atom_len++;
	}
	if (*out_len == 0)
		return fail(c, "empty local part");
	if (atom_len == 0)
		return fail(c, "local part ends with a dot");
	return 0;
}

/*
 *   Quoted-string   = DQUOTE *QcontentSMTP DQUOTE
 *   QcontentSMTP    = qtextSMTP / quoted-pairSMTP
 *   quoted-pairSMTP = %d92 %d32-126                  ; backslash followed by any ASCII graphic or SP
 *   qtextSMTP       = %d32-33 / %d35-91 / %d93-126   ; RFC 6531: =/ UTF8-non-ascii
 * The quotes are kept in out; they do not count against the 64-octet limit.
 */
static int parse_quoted_string(struct cursor *c, char *out, size_t *out_len)
{
	const size_t max = ADDRESS_LOCAL_MAX + 1; /* the opening quote is not counted */

	out[(*out_len)++] = '"';
	c->pos++;
	for (;;) {
		unsigned char ch = c->s[c->pos];
		size_t n = 1;

		if (ch == '"')
			break;
		if (ch == '\\') {
			unsigned char next = c->s[c->pos + 1];

			if (next < 32 || next > 126)
				return fail(c, "bad quoted-pair in local part");
			n = 2;
		} else if (ch >= 0x80) {
			if ((n = take_utf8(c)) == 0)
				return -1;
		} else if (ch == '\0') {
			return fail(c, "unterminated quoted local part");
		} else if (ch < 32 || ch > 126) {
			return fail(c, "bad character in quoted local part");
		}
		if (append(c, out, out_len, max, n, "local part too long") < 0)
			return -1;
	}
	out[(*out_len)++] = '"';
	c->pos++;
	return 0;
}

/*
 *   Domain     = sub-domain *("." sub-domain)
 *   sub-domain = Let-dig [Ldh-str]                 ; RFC 6531: =/ U-label
 *   Let-dig    = ALPHA / DIGIT
 *   Ldh-str    = *( ALPHA / DIGIT / "-" ) Let-dig
 * Each label at most 63 octets (RFC 1035 2.3.4), the whole at most 255.
 */
static int parse_domain(struct cursor *c, char *out, size_t *out_len)
{
	for (;;) {
		size_t label_len = 0;
		unsigned char last = 0;

		for (;;) {
			unsigned char ch = c->s[c->pos];
			size_t n = 1;

			if (ch >= 0x80) {
				if ((n = take_utf8(c)) == 0)
					return -1;
			} else if (ch == '-') {
				if (label_len == 0)
					return fail(c, "domain label starts with a hyphen");
			} else if (!is_let_dig(ch)) {
				break;
			}
			if (label_len + n > LABEL_MAX)
				return fail(c, "domain label too long");
			if (append(c, out, out_len, ADDRESS_DOMAIN_MAX, n, "domain too long") < 0)
				return -1;
			label_len += n;
			last = ch;
		}
		if (label_len == 0)
			return fail(c, "empty domain label");
		if (last == '-')
			return fail(c, "domain label ends with a hyphen");
		if (c->s[c->pos] != '.')
			return 0;
		if (append(c, out, out_len, ADDRESS_DOMAIN_MAX, 1, "domain too long") < 0)
			return -1;
	}
}

/*
 *   General-address-literal = Standardized-tag ":" 1*dcontent
 *   Standardized-tag        = Ldh-str
 *   dcontent                = %d33-90 / %d94-126   ; printable US-ASCII except "[", "\", "]"
 */
static bool general_literal_valid(const char *inner)
{
	const char *colon = strchr(inner, ':');

	if (colon == NULL || colon == inner || colon[1] == '\0')
		return false;
	for (const char *p = inner; p < colon; p++) {
		if (!is_let_dig((unsigned char)*p) && *p != '-')
			return false;
	}
	if (colon[-1] == '-')
		return false;
	for (const char *p = colon + 1; *p != '\0'; p++) {
		unsigned char ch = (unsigned char)*p;

		if (ch < 33 || ch > 126 || ch == '[' || ch == '\\' || ch == ']')
			return false;
	}
	return true;
}

/*
 *   address-literal       = "[" ( IPv4-address-literal / IPv6-address-literal /
 *                                 General-address-literal ) "]"
 *   IPv4-address-literal  = Snum 3("."  Snum)
 *   IPv6-address-literal  = "IPv6:" IPv6-addr
 * IPv4 and IPv6 are checked with inet_pton(), which rejects leading zeros in IPv4 octets.
 */
static int parse_address_literal(struct cursor *c, char *out, size_t *out_len)
{
	char inner[ADDRESS_DOMAIN_MAX + 1];
	size_t inner_len = 0;
	unsigned char addr_buf[sizeof(struct in6_addr)];

	c->pos++; /* '[' */
	while (c->s[c->pos] != ']') {
		unsigned char ch = c->s[c->pos];

		if (ch == '\0' || ch == '>')
			return fail(c, "unterminated address literal");
		if (ch < 33 || ch > 126 || ch == '[' || ch == '\\')
			return fail(c, "bad character in address literal");
		/* the brackets take two of the 255 octets */
		if (inner_len + 2 >= ADDRESS_DOMAIN_MAX)
			return fail(c, "address literal too long");
		inner[inner_len++] = (char)ch;
		c->pos++;
	}
	c->pos++; /* ']' */
	inner[inner_len] = '\0';

	if (inner_len == 0)
		return fail(c, "empty address literal");
	if (strchr(inner, ':') == NULL) {
		if (inet_pton(AF_INET, inner, addr_buf) != 1)
			return fail(c, "bad IPv4 address literal");
	} else if (strncasecmp(inner, "IPv6:", 5) == 0) {
		if (inet_pton(AF_INET6, inner + 5, addr_buf) != 1)
			return fail(c, "bad IPv6 address literal");
	} else if (!general_literal_valid(inner)) {
		return fail(c, "bad address literal");
	}
	*out_len = (size_t)format(out, ADDRESS_DOMAIN_MAX + 1, "[%s]", inner);
	return 0;
}

/*
 *   A-d-l     = At-domain *( "," At-domain )   ; RFC 5321 4.1.2: MUST accept, SHOULD ignore
 *   At-domain = "@" Domain
 */
static int skip_source_route(struct cursor *c)
{
	char scratch[ADDRESS_DOMAIN_MAX + 1];

	for (;;) {
		size_t len = 0;

		if (c->s[c->pos] != '@')
			return fail(c, "bad source route");
		c->pos++;
		if (parse_domain(c, scratch, &len) < 0)
			return -1;
		if (c->s[c->pos] == ':') {
			c->pos++;
			return 0;
		}
		if (c->s[c->pos] != ',')
			return fail(c, "bad source route");
		c->pos++;
	}
}

/*
 *   Path      = "<" [ A-d-l ":" ] Mailbox ">"
 *   Mailbox   = Local-part "@" ( Domain / address-literal )
 *   Local-part = Dot-string / Quoted-string
 * plus "<>" (Reverse-path) and "<Postmaster>" (RCPT only) as the caller allows.
 */
int address_parse_path(const char *s, size_t *pos, struct address *addr_r, bool allow_null,
		       bool allow_postmaster, bool allow_utf8, const char **error_r)
{
	struct cursor c = { .s = (const unsigned char *)s, .pos = *pos, .allow_utf8 = allow_utf8 };
	size_t start, local_len = 0, domain_len = 0;
	bool routed = false;

	memset(addr_r, 0, sizeof(*addr_r));
	while (c.s[c.pos] == ' ')
		c.pos++;
	start = c.pos;
	if (c.s[c.pos] != '<') {
		*error_r = "missing '<'";
		return -1;
	}
	c.pos++;

	if (c.s[c.pos] == '>') {
		if (!allow_null) {
			*error_r = "null address not allowed";
			return -1;
		}
		addr_r->null = true;
		*pos = c.pos + 1;
		return 0;
	}
	if (c.s[c.pos] == '@') {
		if (skip_source_route(&c) < 0)
			goto failed;
		routed = true;
	}

	if (c.s[c.pos] == '"') {
		if (parse_quoted_string(&c, addr_r->local, &local_len) < 0)
			goto failed;
	} else if (parse_dot_string(&c, addr_r->local, &local_len) < 0) {
		goto failed;
	}
	addr_r->local[local_len] = '\0';

	if (c.s[c.pos] == '>' && !routed && allow_postmaster &&
	    strcasecmp(addr_r->local, "postmaster") == 0) {
		/* RFC 5321 4.5.1: "<Postmaster>" without a domain must be accepted for RCPT. */
	} else {
		if (c.s[c.pos] != '@') {
			fail(&c, c.s[c.pos] == '>' ? "missing domain" : "bad character in local part");
			goto failed;
		}
		c.pos++;
		if (c.s[c.pos] == '[') {
			if (parse_address_literal(&c, addr_r->domain, &domain_len) < 0)
				goto failed;
		} else if (parse_domain(&c, addr_r->domain, &domain_len) < 0) {
			goto failed;
		}
		addr_r->domain[domain_len] = '\0';
	}

	if (c.s[c.pos] != '>') {
		fail(&c, c.s[c.pos] == '\0' ? "missing '>'" : "bad character in address");
		goto failed;
	}
	c.pos++;
	if (c.pos - start > ADDRESS_PATH_MAX) {
		fail(&c, "address too long");
		goto failed;
	}
	addr_r->utf8 = c.saw_utf8;
	*pos = c.pos;
	return 0;

failed:
	*error_r = c.error;
	return -1;
}

size_t address_format(const struct address *addr, char *buf, size_t size)
{
	int n;

	if (addr->null)
		n = format(buf, size, "%s", "");
	else if (addr->domain[0] == '\0')
		n = format(buf, size, "%s", addr->local);
	else
		n = format(buf, size, "%s@%s", addr->local, addr->domain);
	return n < 0 ? 0 : (size_t)n;
}

/* Copy at most len octets of src into dst (size bytes), always NUL-terminated when size > 0. */
static void copy_bounded(char *dst, size_t size, const char *src, size_t len)
{
	if (size == 0)
		return;
	if (len >= size)
		len = size - 1;
	memcpy(dst, src, len);
	dst[len] = '\0';
}

void address_split_detail(const struct address *addr, const char *separators, char *base,
			  size_t base_size, char *detail, size_t detail_size)
{
	const char *local = addr->local;
	size_t local_len = strnlen(local, sizeof(addr->local));
	size_t split = local_len;

	/* A quoted local part is one opaque string: "a+b"@x has no detail. */
	if (separators != NULL && separators[0] != '\0' && local[0] != '"')
		split = strcspn(local, separators);
	if (split == 0 || split >= local_len) {
		copy_bounded(base, base_size, local, local_len);
		copy_bounded(detail, detail_size, "", 0);
		return;
	}
	copy_bounded(base, base_size, local, split);
	copy_bounded(detail, detail_size, local + split + 1, local_len - split - 1);
}
