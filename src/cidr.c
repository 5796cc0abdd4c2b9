/*
 * cidr - IPv4/IPv6 networks and membership tests.
 */
#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cidr_parse(const char *text, struct cidr *net_r)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(text, '/');
	size_t len = slash ? (size_t)(slash - text) : strlen(text);

	memset(net_r, 0, sizeof(*net_r));
	if (len == 0 || len >= sizeof(host))
		return -1;
	memcpy(host, text, len);
	host[len] = '\0';
	if (inet_pton(AF_INET, host, net_r->addr) == 1) {
		net_r->family = AF_INET;
		net_r->prefix = 32;
	} else if (inet_pton(AF_INET6, host, net_r->addr) == 1) {
		net_r->family = AF_INET6;
		net_r->prefix = 128;
	} else {
		return -1;
	}
	if (slash != NULL) {
		char *end;
		if (slash[1] < '0' || slash[1] > '9')
			return -1;
		unsigned long p = strtoul(slash + 1, &end, 10);
		if (*end != '\0' || p > net_r->prefix)
			return -1;
		net_r->prefix = (unsigned)p;
	}
	return 0;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	unsigned bytes = bits / 8, rest = bits % 8;

	if (memcmp(a, b, bytes) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (a[bytes] & mask) == (b[bytes] & mask);
}

bool cidr_match(const struct cidr *net, const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return net->family == AF_INET &&
		       prefix_equal(net->addr, (const uint8_t *)&in->sin_addr, net->prefix);
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		const uint8_t *a = in6->sin6_addr.s6_addr;
		if (net->family == AF_INET6)
			return prefix_equal(net->addr, a, net->prefix);
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
			return prefix_equal(net->addr, a + 12, net->prefix);
	}
	return false;
}

bool cidr_list_match(const struct cidr *nets, size_t count, const struct sockaddr *sa)
{
	for (size_t i = 0; i < count; i++) {
		if (cidr_match(&nets[i], sa))
			return true;
	}
	return false;
}
