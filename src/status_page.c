/*
 * status_page - GET /status as a small HTML page (see include/status_page.h).
 *
 * Owns nothing: it renders a metrics_snapshot into a buffer (open_memstream) and forgets it.
 */
#include "status_page.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The badge colours are part of the contract with the screenshot test (the down badge must be
 * found in the picture): keep them in sync with tests/integration/test_status_page.py. */
#define COLOUR_UP "#2e7d32"
#define COLOUR_FAILING "#ef6c00"
#define COLOUR_DOWN "#c62828"
#define COLOUR_IDLE "#757575"

#define BAR_WIDTH 8
#define BAR_HEIGHT 32

/* HTML-escape s into the page. Control bytes become '?': nothing we show needs them. */
static void put_escaped(FILE *f, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		switch (*p) {
		case '&':
			fputs("&amp;", f);
			break;
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		case '\'':
			fputs("&#39;", f);
			break;
		default:
			fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, f);
		}
	}
}

static void put_time(FILE *f, time_t t)
{
	struct tm tm;
	char buf[40];

	if (gmtime_r(&t, &tm) == NULL || strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		fputs("?", f);
	else
		fputs(buf, f);
}

static void put_duration(FILE *f, long long s)
{
	if (s < 0)
		s = 0;
	if (s >= 86400)
		fprintf(f, "%lldd %lldh %02lldm", s / 86400, s % 86400 / 3600, s % 3600 / 60);
	else if (s >= 3600)
		fprintf(f, "%lldh %02lldm %02llds", s / 3600, s % 3600 / 60, s % 60);
	else if (s >= 60)
		fprintf(f, "%lldm %02llds", s / 60, s % 60);
	else
		fprintf(f, "%llds", s);
}

/* What a person should read first about a backend. */
static const char *state_of(const struct metrics_backend_snapshot *b, const char **colour_r,
			    const char **detail_r)
{
	if (b->down) {
		*colour_r = COLOUR_DOWN;
		*detail_r = "circuit breaker open: recipients get 451 4.4.1 at RCPT";
		return "down";
	}
	if (b->last_class == 1) {
		*colour_r = COLOUR_FAILING;
		*detail_r = "latest result was a temporary failure";
		return "failing";
	}
	if (b->last_class < 0) {
		*colour_r = COLOUR_IDLE;
		*detail_r = "no delivery since start";
		return "idle";
	}
	*colour_r = COLOUR_UP;
	*detail_r = "";
	return "up";
}

/* Stacked bars, oldest minute on the left: delivered (green), deferred (orange), bounced (red),
 * scaled to the busiest minute; each bar's <title> gives the numbers. */
static void put_history_svg(FILE *f, const struct metrics_backend_snapshot *b)
{
	static const char *const colours[3] = { COLOUR_UP, COLOUR_FAILING, COLOUR_DOWN };
	unsigned long long busiest = 1;

	for (int ago = 0; ago < METRICS_HISTORY_MINUTES; ago++) {
		unsigned long long sum = b->history[ago][0] + b->history[ago][1] + b->history[ago][2];
		if (sum > busiest)
			busiest = sum;
	}
	fprintf(f, "<svg class=\"history\" width=\"%d\" height=\"%d\" role=\"img\" "
		   "aria-label=\"results per minute\">",
		METRICS_HISTORY_MINUTES * BAR_WIDTH, BAR_HEIGHT);
	fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"#f3f3f3\"/>",
		METRICS_HISTORY_MINUTES * BAR_WIDTH, BAR_HEIGHT);
	for (int ago = METRICS_HISTORY_MINUTES - 1; ago >= 0; ago--) {
		int x = (METRICS_HISTORY_MINUTES - 1 - ago) * BAR_WIDTH;
		double y = BAR_HEIGHT;
		fprintf(f, "<g><title>%d min ago: %llu delivered, %llu deferred, %llu bounced</title>",
			ago, b->history[ago][0], b->history[ago][1], b->history[ago][2]);
		for (int c = 0; c < 3; c++) {
			if (b->history[ago][c] == 0)
				continue;
			double h = (double)b->history[ago][c] * BAR_HEIGHT / (double)busiest;
			if (h < 1)
				h = 1;
			y -= h;
			fprintf(f, "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\" fill=\"%s\"/>",
				x + 1, y, BAR_WIDTH - 2, h, colours[c]);
		}
		fputs("</g>", f);
	}
	fputs("</svg>", f);
}

static void put_backend_row(FILE *f, const struct metrics_backend_snapshot *b, time_t now)
{
	const char *colour, *detail;
	const char *state = state_of(b, &colour, &detail);
	unsigned long long recent[3] = { 0, 0, 0 };

	for (int ago = 0; ago < METRICS_HISTORY_MINUTES; ago++)
		for (int c = 0; c < 3; c++)
			recent[c] += b->history[ago][c];
	fputs("<tr class=\"backend\" data-backend=\"", f);
	put_escaped(f, b->name);
	fprintf(f, "\" data-state=\"%s\"><th scope=\"row\" class=\"name\">", state);
	put_escaped(f, b->name);
	fprintf(f, "</th><td class=\"state\"><span class=\"badge %s\" style=\"background:%s\">%s"
		   "</span>",
		state, colour, state);
	if (detail[0] != '\0')
		fprintf(f, "<br><small>%s</small>", detail);
	fprintf(f, "</td><td class=\"num\" data-k=\"recent-ok\">%llu</td>"
		   "<td class=\"num\" data-k=\"recent-tempfail\">%llu</td>"
		   "<td class=\"num\" data-k=\"recent-permfail\">%llu</td><td>",
		recent[0], recent[1], recent[2]);
	put_history_svg(f, b);
	fprintf(f, "</td><td class=\"num\" data-k=\"total-ok\">%llu</td>"
		   "<td class=\"num\" data-k=\"total-tempfail\">%llu</td>"
		   "<td class=\"num\" data-k=\"total-permfail\">%llu</td><td class=\"lasterror\">",
		b->results[0], b->results[1], b->results[2]);
	if (b->last_error_at != 0) {
		fputs("<span data-k=\"last-error\">", f);
		put_escaped(f, b->last_error);
		fputs("</span><br><small data-k=\"last-error-at\">", f);
		put_time(f, b->last_error_at);
		fputs(" (", f);
		put_duration(f, (long long)(now - b->last_error_at));
		fputs(" ago)</small>", f);
	} else {
		fputs("<small>none</small>", f);
	}
	fputs("</td></tr>\n", f);
}

static void put_figure(FILE *f, const char *key, const char *label, long long value)
{
	fprintf(f, "<tr><th scope=\"row\">%s</th><td class=\"num\" data-k=\"%s\">%lld</td></tr>\n",
		label, key, value);
}

char *status_page_render(const struct metrics_snapshot *s, size_t *len_r)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		return NULL;
	fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
	      "<meta http-equiv=\"refresh\" content=\"30\">"
	      "<meta name=\"viewport\" content=\"width=device-width\">"
	      "<title>lmtpgw status</title>\n<style>\n"
	      "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212121;background:#fff}\n"
	      "h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.5em 0 .4em}\n"
	      "table{border-collapse:collapse}th,td{padding:.3em .6em;text-align:left;"
	      "border-bottom:1px solid #e0e0e0;vertical-align:top}\n"
	      "td.num{text-align:right;font-variant-numeric:tabular-nums}\n"
	      ".badge{display:inline-block;min-width:4.5em;text-align:center;color:#fff;"
	      "font-weight:bold;padding:.15em .5em;border-radius:.3em}\n"
	      ".lasterror{min-width:14em;max-width:34em;word-break:break-word}small{color:#616161}\n"
	      ".state{min-width:13em}\n"
	      "</style></head><body>\n",
	      f);
	fputs("<h1>lmtpgw <span id=\"version\">", f);
	put_escaped(f, s->version);
	fputs("</span></h1>\n<p>Up <span id=\"uptime\" data-seconds=\"", f);
	fprintf(f, "%lld\">", s->uptime_s);
	put_duration(f, s->uptime_s);
	fputs("</span>; page made <span id=\"generated\">", f);
	put_time(f, s->now);
	fputs("</span>, reloaded every 30 s. Numbers count since the start; the per-minute history "
	      "covers the last ",
	      f);
	fprintf(f, "%d minutes.</p>\n", METRICS_HISTORY_MINUTES);

	fputs("<h2>Backends</h2>\n<table id=\"backends\"><thead><tr><th rowspan=\"2\">backend</th>"
	      "<th rowspan=\"2\">state</th>",
	      f);
	fprintf(f, "<th colspan=\"4\">last %d minutes</th>", METRICS_HISTORY_MINUTES);
	fputs("<th colspan=\"3\">since start</th><th rowspan=\"2\">last failure</th></tr>\n"
	      "<tr><th>delivered</th><th>deferred</th><th>bounced</th><th>per minute</th>"
	      "<th>delivered</th><th>deferred</th><th>bounced</th></tr></thead>\n<tbody>\n",
	      f);
	size_t shown = 0;
	for (size_t i = 0; i < s->backend_count; i++) {
		const struct metrics_backend_snapshot *b = &s->backends[i];
		if (!b->configured)
			continue; /* removed by a reload */
		put_backend_row(f, b, s->now);
		shown++;
	}
	if (shown == 0)
		fputs("<tr><td colspan=\"10\">no backend configured</td></tr>\n", f);
	fputs("</tbody></table>\n", f);

	fputs("<h2>Connections and deliveries</h2>\n<table id=\"figures\"><tbody>\n", f);
	put_figure(f, "connections-open", "LMTP connections open", s->connections_open);
	put_figure(f, "connections-total", "connections accepted since start",
		   (long long)s->connections_total);
	put_figure(f, "refused-max-connections", "refused: over max_connections",
		   (long long)s->refused[METRICS_REFUSED_MAX_CONNECTIONS]);
	put_figure(f, "refused-per-client", "refused: over max_connections_per_client",
		   (long long)s->refused[METRICS_REFUSED_PER_CLIENT]);
	put_figure(f, "refused-allow-clients", "refused: outside allow_clients",
		   (long long)s->refused[METRICS_REFUSED_ALLOW_CLIENTS]);
	put_figure(f, "deadline-command", "closed: too slow sending a command",
		   (long long)s->deadline_expiries[METRICS_DEADLINE_COMMAND]);
	put_figure(f, "deadline-data", "closed: too slow sending the message",
		   (long long)s->deadline_expiries[METRICS_DEADLINE_DATA]);
	put_figure(f, "in-flight", "messages being delivered now", s->in_flight);
	put_figure(f, "transactions", "messages received", (long long)s->transactions);
	put_figure(f, "recipients-2xx", "recipient replies 2xx (stored)",
		   (long long)s->recipients[0]);
	put_figure(f, "recipients-4xx", "recipient replies 4xx (deferred)",
		   (long long)s->recipients[1]);
	put_figure(f, "recipients-5xx", "recipient replies 5xx (bounced)",
		   (long long)s->recipients[2]);
	fputs("</tbody></table>\n<p><small>Machine-readable: <a href=\"/metrics\">/metrics</a>; "
	      "liveness: <a href=\"/health\">/health</a>.</small></p>\n</body></html>\n",
	      f);
	if (ferror(f)) {
		fclose(f);
		free(buf);
		return NULL;
	}
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	*len_r = len;
	return buf;
}
