/*
 * base64 - RFC 4648 base64 (standard alphabet, padded, no line breaks), for webhook signatures
 * and bodies, the json-parsed attachments (mime_json) and S3 checksums.
 *
 * OpenSSL's EVP_EncodeBlock / EVP_DecodeBlock do the work; this module adds what they lack:
 * lengths beyond INT_MAX (EVP_EncodeBlock takes an int), and a strict decode (EVP_DecodeBlock
 * takes '=' anywhere as a zero sextet and counts padding as decoded bytes).
 *
 * Error contract: base64_decode returns -1 on anything that is not canonical padded base64.
 */
#ifndef LMTPGW_BASE64_H
#define LMTPGW_BASE64_H

#include <stddef.h>
#include <sys/types.h>

/* Bytes the encoding of len bytes needs, the terminating NUL included. */
size_t base64_encoded_size(size_t len);

/* The base64 of len bytes into out (base64_encoded_size(len) bytes), NUL-terminated; returns
 * the encoded length. */
size_t base64_encode(const void *data, size_t len, char *out);

/* Decode len characters (a multiple of 4; only A-Z a-z 0-9 + / and one or two '=' of padding
 * at the end) into out, which holds 3 * (len / 4) bytes. Returns the decoded length, or -1. */
ssize_t base64_decode(const char *in, size_t len, unsigned char *out);

#endif
