/* status_page_render(): the /status page shows what it is given, HTML-escaped (src/status_page.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "status_page.h"

static char *render(struct metrics_snapshot *s)
{
	size_t len = 0;
	char *html = status_page_render(s, &len);

	cr_assert_not_null(html);
	cr_assert_eq(strlen(html), len, "the page has no NUL inside and len is its length");
	return html;
}

Test(status_page, values_from_outside_are_escaped)
{
	struct metrics_snapshot *s = calloc(1, sizeof(*s));

	cr_assert_not_null(s);
	snprintf(s->version, sizeof(s->version), "1.0<i>");
	s->now = 1800000000;
	s->backend_count = 1;
	struct metrics_backend_snapshot *b = &s->backends[0];
	snprintf(b->name, sizeof(b->name), "hook\"><script>x</script>");
	b->configured = true;
	b->down = true;
	b->last_class = 1;
	snprintf(b->last_error, sizeof(b->last_error),
		 "451 4.4.1 <script>alert('x')</script> & \"quoted\"\x01");
	b->last_error_at = s->now - 90;
	char *html = render(s);

	cr_expect_null(strstr(html, "<script"), "a script tag got through:\n%s", html);
	cr_expect_null(strstr(html, "<i>"));
	cr_expect_not_null(strstr(html, "451 4.4.1 &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; "
					"&amp; &quot;quoted&quot;?"));
	cr_expect_not_null(strstr(html, "data-backend=\"hook&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""));
	cr_expect_not_null(strstr(html, "data-state=\"down\""));
	cr_expect_not_null(strstr(html, "(1m 30s ago)"));
	cr_expect_not_null(strstr(html, "1.0&lt;i&gt;"));
	free(html);
	free(s);
}

Test(status_page, states_and_removed_backends)
{
	struct metrics_snapshot *s = calloc(1, sizeof(*s));

	cr_assert_not_null(s);
	s->backend_count = 4;
	const char *names[4] = { "a", "b", "c", "gone" };
	int classes[4] = { 0, 1, -1, 0 };
	for (int i = 0; i < 4; i++) {
		snprintf(s->backends[i].name, sizeof(s->backends[i].name), "%s", names[i]);
		s->backends[i].configured = i != 3;
		s->backends[i].last_class = classes[i];
	}
	s->backends[0].history[0][0] = 5;
	s->backends[0].history[14][0] = 2;
	char *html = render(s);

	cr_expect_not_null(strstr(html, "data-backend=\"a\" data-state=\"up\""));
	cr_expect_not_null(strstr(html, "data-backend=\"b\" data-state=\"failing\""));
	cr_expect_not_null(strstr(html, "data-backend=\"c\" data-state=\"idle\""));
	cr_expect_null(strstr(html, "data-backend=\"gone\""), "a backend a reload removed is not shown");
	cr_expect_not_null(strstr(html, "data-k=\"recent-ok\">7<"));
	cr_expect_not_null(strstr(html, "14 min ago: 2 delivered"));
	free(html);
	free(s);
}
