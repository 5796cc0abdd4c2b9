/*
 * cidr - IPv4/IPv6 networks ("10.0.0.0/8", "::1/128", "192.0.2.7") and membership tests,
 * for the client allow-list of TCP listeners and the trusted networks. An IPv4-mapped IPv6 client (::ffff:a.b.c.d)
 * matches IPv4 networks.
 */
#ifndef LMTPGW_CIDR_H
#define LMTPGW_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
	int family;          /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;     /* bits */
};

/* 0, or -1 for anything that is not a numeric address with an optional /prefix in range. */
int cidr_parse(const char *text, struct cidr *net_r);
bool cidr_match(const struct cidr *net, const struct sockaddr *sa);
/* Is sa in any of nets[0..count)? False for an empty list and for non-IP addresses. */
bool cidr_list_match(const struct cidr *nets, size_t count, const struct sockaddr *sa);

#endif
