/*
 * tls - the server side of TLS for LMTP listeners (OpenSSL): STARTTLS and TLS-only listeners.
 *
 * A context is built from the configuration (certificate chain, key, optional client CA) with
 * modern defaults: TLS 1.2 and 1.3 only, no compression, no renegotiation, server cipher
 * preference. The configuration owns it, so SIGHUP loads new certificates for new sessions.
 *
 * Error contract: tls_server_context_new() returns NULL with a message in error_r.
 */
#ifndef LMTPGW_TLS_H
#define LMTPGW_TLS_H

#include <stdbool.h>
#include <stddef.h>

/* cert_file: PEM chain (leaf first); key_file: PEM key (must not be readable by others);
 * client_ca_file: when set, clients are asked for a certificate, and with require_client_cert a
 * client without a valid one is refused in the handshake. */
void *tls_server_context_new(const char *cert_file, const char *key_file,
			     const char *client_ca_file, bool require_client_cert, char *error_r,
			     size_t error_size);
void tls_context_free(void *ctx);

/* After a handshake: "TLSv1.3 TLS_AES_256_GCM_SHA384" into buf, and the client certificate's
 * subject CN (or "") into cn. ssl is an SSL *. */
void tls_describe(void *ssl, char *buf, size_t size, char *cn, size_t cn_size);

#endif
