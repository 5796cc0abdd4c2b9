/*
 * s3_credentials - the S3 access key, secret key and session token, from files (refused when
 * group or others may read them, secret.h) or the AWS_* environment variables:
 *   credentials_file                  access key id on line 1, secret key on line 2
 *   access_key_file, secret_key_file  one each (they go together; exclude credentials_file)
 *   neither                           AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
 *                                     AWS_SESSION_TOKEN (unless session_token_file is set)
 *   session_token_file                a session token (temporary credentials), optional
 * Kept once, wiped by s3_credentials_wipe(), never logged.
 */
#ifndef LMTPGW_S3_CREDENTIALS_H
#define LMTPGW_S3_CREDENTIALS_H

#include <stddef.h>

/* Where the credentials come from: the driver's settings (NULL: not set). */
struct s3_credential_files {
	const char *credentials_file;
	const char *access_key_file;
	const char *secret_key_file;
	const char *session_token_file;
};

struct s3_credentials {
	char *access_key;
	char *secret_key;          /* wiped */
	char *session_token;       /* NULL without one; wiped */
};

/* Fill *cred_r (zeroed by the caller). 0, or -1 with a message (what was read so far stays in
 * *cred_r: wipe it). Credentials with spaces or non-ASCII bytes are refused. */
int s3_credentials_load(const struct s3_credential_files *files, struct s3_credentials *cred_r,
			char *error_r, size_t error_size);

/* Wipe and free; *cred is zeroed. */
void s3_credentials_wipe(struct s3_credentials *cred);

#endif
