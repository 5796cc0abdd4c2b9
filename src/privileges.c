/*
 * privileges - drop root for `user`/`group`, or refuse to run as root (include/privileges.h).
 *
 * One rule for the daemon (after binding its sockets) and the subcommands that deliver mail
 * (`deliver`): a process that parses a message from outside must not stay root.
 */
#include "privileges.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

int privileges_drop(const struct config *cfg, const char *what)
{
	if (cfg->user == NULL) {
		if (geteuid() != 0)
			return 0;
		if (!cfg->run_as_root) {
			log_error("event=startup_failed error=\"refusing to %s as root: set 'user' (and "
				  "'group') to drop privileges, or run_as_root = true for a trial\"",
				  what);
			return -1;
		}
		log_warn("event=running_as_root hint=\"set 'user' in the configuration\"");
		return 0;
	}
	struct passwd *pw = getpwnam(cfg->user);
	if (pw == NULL) {
		log_error("event=startup_failed error=\"unknown user '%s'\"", cfg->user);
		return -1;
	}
	gid_t gid = pw->pw_gid;
	if (cfg->group != NULL) {
		struct group *gr = getgrnam(cfg->group);
		if (gr == NULL) {
			log_error("event=startup_failed error=\"unknown group '%s'\"", cfg->group);
			return -1;
		}
		gid = gr->gr_gid;
	}
	if (geteuid() != 0) {
		if (getuid() == pw->pw_uid)
			return 0;
		log_error("event=startup_failed error=\"must start as root or as '%s' to %s\"",
			  cfg->user, what);
		return -1;
	}
	if (initgroups(pw->pw_name, gid) < 0 || setgid(gid) < 0 || setuid(pw->pw_uid) < 0) {
		log_error("event=startup_failed error=\"cannot become %s: %s\"", cfg->user,
			  strerror(errno));
		return -1;
	}
	log_info("event=privileges_dropped user=%s uid=%d gid=%d", cfg->user, (int)pw->pw_uid,
		 (int)gid);
	return 0;
}
