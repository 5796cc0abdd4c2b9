/*
 * deliver - `lmtpgw deliver`: one message from standard input, delivered through the router,
 * the backends, the trace headers and the reply policy of the daemon, with one line per
 * recipient on standard output (the reply the daemon would have sent) and an exit status per
 * sysexits(3), for MTAs that run a command (Postfix pipe(8), Exim's pipe transport, OpenSMTPD
 * `mda`), fetchmail, procmail chains and cron jobs. It never needs the daemon running.
 *
 * Exit status (docs/deliver.md has the full table): 0 every recipient stored; 75 EX_TEMPFAIL
 * for any doubt, any 4xx, a mix of stored and refused recipients, and every local problem
 * (configuration, command line, standard input, root without `user`); otherwise the sysexits
 * code of the recipients' common permanent refusal (67 EX_NOUSER 5.1.x, 65 EX_DATAERR 5.1.3 /
 * 5.1.7 / 5.3.4 / 5.6.x, 73 EX_CANTCREAT 5.2.x, 77 EX_NOPERM 5.7.x, 76 EX_PROTOCOL 5.5.x,
 * 69 EX_UNAVAILABLE for the rest and for permanent refusals that disagree).
 */
#ifndef LMTPGW_DELIVER_H
#define LMTPGW_DELIVER_H

#include <stdbool.h>

struct status;

/* Run `deliver` with its own arguments (those after the word "deliver"); returns the exit
 * status. debug: -d was given before the command. */
int deliver_main(const char *config_path, bool debug, int argc, char **argv);

/* The sysexits(3) code for one recipient's final reply (2xx 0, 4xx 75, 5xx by its enhanced
 * code), and for a whole invocation (count replies; NULL entries are recipients never
 * answered, which count as 75). */
int deliver_sysexit(const struct status *st);
int deliver_exit_status(const struct status *const *replies, unsigned count);

#endif
