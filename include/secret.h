/*
 * secret - passwords, keys and tokens read from files, the one way every backend reads them.
 *
 * A secret file is refused when its group or others have any permission on it (the admin is
 * told to chmod 600), or when it is larger than 64 KiB. Its content is never logged. Buffers
 * holding secrets are wiped before they are freed.
 *
 * Error contract: NULL with "path: reason" in error_r.
 */
#ifndef LMTPGW_SECRET_H
#define LMTPGW_SECRET_H

#include <stddef.h>

/* The whole file, NUL-terminated. Free with secret_free(). */
char *secret_read_file(const char *path, char *error_r, size_t error_size);

/* Line `line` (0-based) of the file, blanks around it trimmed; an empty or missing line is an
 * error ("path: line N is missing or empty"). Free with secret_free(). */
char *secret_read_line(const char *path, int line, char *error_r, size_t error_size);

/* Wipe a NUL-terminated secret and free it; sets *secret to NULL. */
void secret_free(char **secret);

/* Wipe len bytes and free. */
void secret_free_bytes(void *p, size_t len);

#endif
