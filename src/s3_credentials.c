/*
 * s3_credentials - S3 credentials from files or the environment (see s3_credentials.h).
 */
#include "s3_credentials.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3_fields.h"
#include "secret.h"

/* The access key from line access_line of access_path, the secret key from line secret_line
 * of secret_path. */
static int read_key_pair(struct s3_credentials *cred, const char *access_path, int access_line,
			 const char *secret_path, int secret_line, char *error_r,
			 size_t error_size)
{
	cred->access_key = secret_read_line(access_path, access_line, error_r, error_size);
	if (cred->access_key == NULL)
		return -1;
	cred->secret_key = secret_read_line(secret_path, secret_line, error_r, error_size);
	return cred->secret_key == NULL ? -1 : 0;
}

int s3_credentials_load(const struct s3_credential_files *files, struct s3_credentials *cred,
			char *error_r, size_t error_size)
{
	if (files->credentials_file != NULL) {
		if (files->access_key_file != NULL || files->secret_key_file != NULL) {
			snprintf(error_r, error_size,
				 "credentials_file excludes access_key_file and secret_key_file");
			return -1;
		}
		if (read_key_pair(cred, files->credentials_file, 0, files->credentials_file, 1,
				  error_r, error_size) < 0)
			return -1;
	} else if (files->access_key_file != NULL || files->secret_key_file != NULL) {
		if (files->access_key_file == NULL || files->secret_key_file == NULL) {
			snprintf(error_r, error_size, "access_key_file and secret_key_file go together");
			return -1;
		}
		if (read_key_pair(cred, files->access_key_file, 0, files->secret_key_file, 0, error_r,
				  error_size) < 0)
			return -1;
	} else {
		const char *ak = getenv("AWS_ACCESS_KEY_ID"), *sk = getenv("AWS_SECRET_ACCESS_KEY");
		if (ak == NULL || ak[0] == '\0' || sk == NULL || sk[0] == '\0') {
			snprintf(error_r, error_size,
				 "no credentials: set credentials_file (or access_key_file and "
				 "secret_key_file), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
			return -1;
		}
		cred->access_key = strdup(ak);
		cred->secret_key = strdup(sk);
		const char *tok = getenv("AWS_SESSION_TOKEN");
		if (tok != NULL && tok[0] != '\0' && files->session_token_file == NULL)
			cred->session_token = strdup(tok);
		if (cred->access_key == NULL || cred->secret_key == NULL) {
			snprintf(error_r, error_size, "out of memory");
			return -1;
		}
	}
	if (files->session_token_file != NULL) {
		cred->session_token = secret_read_line(files->session_token_file, 0, error_r, error_size);
		if (cred->session_token == NULL)
			return -1;
	}
	if (!s3_token_ok(cred->access_key) || !s3_token_ok(cred->secret_key) ||
	    (cred->session_token != NULL && !s3_token_ok(cred->session_token)) ||
	    strlen(cred->secret_key) > 200) {
		snprintf(error_r, error_size, "credentials contain spaces or non-ASCII bytes");
		return -1;
	}
	return 0;
}

void s3_credentials_wipe(struct s3_credentials *cred)
{
	secret_free(&cred->secret_key);
	secret_free(&cred->session_token);
	free(cred->access_key);
	cred->access_key = NULL;
}
