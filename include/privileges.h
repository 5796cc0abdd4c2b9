/*
 * privileges - the rule every lmtpgw process follows about root: drop to `user` (and `group`)
 * when started as root, refuse to go on as root without `user` unless run_as_root is set.
 *
 * Error contract: privileges_drop() returns 0, or -1 after logging event=startup_failed with
 * the reason (the caller picks its exit status: the daemon 77, `deliver` 75).
 */
#ifndef LMTPGW_PRIVILEGES_H
#define LMTPGW_PRIVILEGES_H

struct config;

/* what: "serve" or "deliver", for the refusal's text. */
int privileges_drop(const struct config *cfg, const char *what);

#endif
