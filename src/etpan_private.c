/*
 * etpan_private - the one file that touches libetpan's session internals and declares a
 * function from its private headers (etpan_private.h says what and why).
 *
 * Checked against libetpan 1.9.4 as packaged in Debian 12 (libetpan20 1.9.4-3.1), source tag
 * 1.9.4 of github.com/dinhvh/libetpan: mailimap_send_current_tag() increments imap_tag and
 * sends it with a space; mailimap_parse_response() stores imap_response_info and
 * imap_response, then returns MAILIMAP_ERROR_PROTOCOL for a tagged BAD or a tag other than
 * imap_tag and MAILIMAP_ERROR_FATAL for BYE; mailimap_literal_data_send() is declared only in
 * src/low-level/imap/mailimap_sender.h but exported by libetpan.so.20. Another version may
 * change any of this without notice, so the build stops there until someone has re-read those
 * functions (docs/backends/imap.md, "libetpan version").
 */
#include "etpan_private.h"

#include <libetpan/libetpan_version.h>

#if !defined(LIBETPAN_VERSION_MAJOR) || !defined(LIBETPAN_VERSION_MINOR) || \
	LIBETPAN_VERSION_MAJOR != 1 || LIBETPAN_VERSION_MINOR != 9
#error "checked against libetpan 1.9 only: see docs/backends/imap.md"
#endif

/* libetpan 1.9 src/low-level/imap/mailimap_sender.h (not installed). */
int mailimap_literal_data_send(mailstream *fd, const char *literal, size_t len,
			       size_t progr_rate, progress_function *progr_fun);

int etpan_command_begin(mailimap *imap)
{
	return mailimap_send_current_tag(imap) == MAILIMAP_NO_ERROR ? 0 : -1;
}

int etpan_command_write(mailimap *imap, const void *data, size_t len)
{
	return mailstream_write(imap->imap_stream, data, len) == (ssize_t)len ? 0 : -1;
}

int etpan_literal_write_crlf(mailimap *imap, const char *data, size_t len)
{
	return mailimap_literal_data_send(imap->imap_stream, data, len, 0, NULL) ==
			       MAILIMAP_NO_ERROR
		       ? 0
		       : -1;
}

size_t etpan_literal_crlf_size(const char *data, size_t len)
{
	return mailstream_get_data_crlf_size(data, len);
}

int etpan_command_flush(mailimap *imap)
{
	return mailstream_flush(imap->imap_stream) == -1 ? -1 : 0;
}

const char *etpan_read_line(mailimap *imap)
{
	return mailimap_read_line(imap);
}

void etpan_set_authenticated(mailimap *imap)
{
	imap->imap_state = MAILIMAP_STATE_AUTHENTICATED;
}

enum etpan_tagged etpan_read_tagged(mailimap *imap)
{
	if (mailimap_read_line(imap) == NULL)
		return ETPAN_TAGGED_LOST;
	return etpan_parse_tagged(imap);
}

enum etpan_tagged etpan_parse_tagged(mailimap *imap)
{
	struct mailimap_response *response = NULL;

	int r = mailimap_parse_response(imap, &response);
	if (r == MAILIMAP_ERROR_PROTOCOL)
		return ETPAN_TAGGED_BAD;
	if (r != MAILIMAP_NO_ERROR || response == NULL || response->rsp_resp_done == NULL ||
	    response->rsp_resp_done->rsp_type != MAILIMAP_RESP_DONE_TYPE_TAGGED) {
		if (response != NULL)
			mailimap_response_free(response);
		return ETPAN_TAGGED_LOST;
	}
	int state = response->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
	mailimap_response_free(response);
	/* BAD was MAILIMAP_ERROR_PROTOCOL above; a tagged line is OK, NO or BAD (RFC 3501 7.1). */
	return state == MAILIMAP_RESP_COND_STATE_OK ? ETPAN_TAGGED_OK : ETPAN_TAGGED_NO;
}

const struct mailimap_response_info *etpan_response_info(const mailimap *imap)
{
	return imap->imap_response_info;
}

const char *etpan_response_text(const mailimap *imap)
{
	return imap->imap_response != NULL ? imap->imap_response : "";
}
