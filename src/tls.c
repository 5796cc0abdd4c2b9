/*
 * tls - the server side of TLS for LMTP listeners (OpenSSL).
 */
#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

static void openssl_error(char *error_r, size_t error_size, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char detail[256] = "unknown error";

	if (e != 0)
		ERR_error_string_n(e, detail, sizeof(detail));
	ERR_clear_error();
	snprintf(error_r, error_size, "%s %s: %s", what, file, detail);
}

void *tls_server_context_new(const char *cert_file, const char *key_file,
			     const char *client_ca_file, bool require_client_cert, char *error_r,
			     size_t error_size)
{
	struct stat sb;

	if (cert_file == NULL || key_file == NULL) {
		snprintf(error_r, error_size, "TLS needs both tls_cert_file and tls_key_file");
		return NULL;
	}
	if (stat(key_file, &sb) < 0) {
		snprintf(error_r, error_size, "%s: %s", key_file, strerror(errno));
		return NULL;
	}
	if (sb.st_mode & S_IRWXO) {
		snprintf(error_r, error_size,
			 "%s: private key must not be readable by others (chmod 600 or 640)", key_file);
		return NULL;
	}
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		snprintf(error_r, error_size, "cannot create TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
					 SSL_OP_CIPHER_SERVER_PREFERENCE);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
		openssl_error(error_r, error_size, "cannot load certificate", cert_file);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
		openssl_error(error_r, error_size, "cannot load key", key_file);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		openssl_error(error_r, error_size, "key does not match certificate", cert_file);
		goto fail;
	}
	if (client_ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, client_ca_file, NULL) != 1) {
			openssl_error(error_r, error_size, "cannot load client CA", client_ca_file);
			goto fail;
		}
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca_file);
		if (names != NULL)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx,
				   SSL_VERIFY_PEER |
					   (require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
				   NULL);
	} else if (require_client_cert) {
		snprintf(error_r, error_size, "tls_require_client_cert needs tls_client_ca_file");
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

void tls_context_free(void *ctx)
{
	SSL_CTX_free(ctx);
}

void tls_describe(void *ssl_ptr, char *buf, size_t size, char *cn, size_t cn_size)
{
	SSL *ssl = ssl_ptr;
	X509 *peer = SSL_get1_peer_certificate(ssl);

	snprintf(buf, size, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
	cn[0] = '\0';
	if (peer != NULL) {
		if (SSL_get_verify_result(ssl) == X509_V_OK)
			X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn,
						  (int)cn_size);
		X509_free(peer);
	}
}
