/*
 * maildir - delivery into local Maildirs (the embedded default backend).
 *
 * One file per recipient, written the Maildir way: create a unique name in tmp/, write the
 * trace headers and the content, fsync the file, rename it into new/, fsync new/. Only then is
 * the target ok (design.md: 2xx only after durable storage). With folder_from_detail,
 * "bob+lists@x" goes to the Maildir++ folder ".lists" of bob's Maildir. Directories are created
 * on demand (create = true), each new directory fsynced with its parent before any 2xx; with
 * create = false a missing Maildir is refused at RCPT time.
 *
 * Unique names follow the Maildir spec and Dovecot: "SECONDS.MUSECPpidQcounter.host,S=size".
 */
#include "backend.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define MAILDIR_PATH_MAX 4096

struct maildir_settings {
	char *path;
	bool folder_from_detail;
	bool fsync;
	bool create;
	long long dir_mode;
	long long file_mode;
};

struct maildir_state {
	char name[64];
	struct template *path;
	struct maildir_settings settings;
	char host[256];
	atomic_ulong counter;
};

static const struct conf_key maildir_keys[] = {
	{ "path", CONF_STRING, offsetof(struct maildir_settings, path), NULL, 1, 0,
	  "Maildir of a recipient, a template (e.g. \"var/mail/%{domain}/%{local}\")" },
	{ "folder_from_detail", CONF_BOOL, offsetof(struct maildir_settings, folder_from_detail),
	  "false", 1, 0, "deliver user+detail into the Maildir++ folder .detail" },
	{ "fsync", CONF_BOOL, offsetof(struct maildir_settings, fsync), "true", 1, 0,
	  "fsync file and directory before answering 2xx (turn off only for tests)" },
	{ "create", CONF_BOOL, offsetof(struct maildir_settings, create), "true", 1, 0,
	  "create missing Maildirs; when false, unknown mailboxes get 550 5.1.1 at RCPT" },
	{ "dir_mode", CONF_INT, offsetof(struct maildir_settings, dir_mode), "0700", 0, 07777,
	  "permissions of directories created (octal)" },
	{ "file_mode", CONF_INT, offsetof(struct maildir_settings, file_mode), "0600", 0, 07777,
	  "permissions of message files (octal)" },
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

static int maildir_open(const void *settings, const char *instance_name, void **state_r,
			char *error_r, size_t error_size)
{
	const struct maildir_settings *set = settings;
	const char *error;

	if (set->path == NULL || set->path[0] == '\0') {
		snprintf(error_r, error_size, "maildir needs 'path'");
		return -1;
	}
	struct maildir_state *st = calloc(1, sizeof(*st));
	if (st == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return -1;
	}
	if (template_compile(set->path, &st->path, &error) < 0) {
		snprintf(error_r, error_size, "path: %s", error);
		free(st);
		return -1;
	}
	st->settings = *set;
	snprintf(st->name, sizeof(st->name), "%s", instance_name);
	if (gethostname(st->host, sizeof(st->host)) < 0)
		snprintf(st->host, sizeof(st->host), "localhost");
	st->host[sizeof(st->host) - 1] = '\0';
	/* '/' and ':' have meanings in Maildir names (Maildir spec). */
	for (char *p = st->host; *p; p++) {
		if (*p == '/' || *p == ':')
			*p = '_';
	}
	*state_r = st;
	return 0;
}

static void maildir_close(void *state)
{
	struct maildir_state *st = state;

	if (st == NULL)
		return;
	template_free(&st->path);
	free(st);
}

/* mkdir -p, keeping existing directories as they are. *created_r: the length of the prefix of
 * path naming the first directory this call created (every deeper one was created too), or 0
 * when path existed whole. */
static int make_dirs(char *path, mode_t mode, size_t *created_r)
{
	*created_r = 0;
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		int r = mkdir(path, mode);
		*p = '/';
		if (r < 0 && errno != EEXIST)
			return -1;
		if (r == 0 && *created_r == 0)
			*created_r = (size_t)(p - path);
	}
	int r = mkdir(path, mode);
	if (r < 0 && errno != EEXIST)
		return -1;
	if (r == 0 && *created_r == 0)
		*created_r = strlen(path);
	return 0;
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int r = fsync(fd);
	int saved = errno;
	close(fd);
	errno = saved;
	return r;
}

/*
 * Group commit of directory fsyncs. A rename into new/ is durable once new/ has been fsynced
 * after it. Deliveries into the same directory take a ticket after their rename; one of them
 * runs fsync() for everyone whose ticket was issued before that fsync started, the others wait.
 * Under load, one directory fsync covers many messages (design.md, "Concurrency model").
 * Entries live only while deliveries use them, so the list stays as short as the concurrency.
 */
struct dirsync {
	struct dirsync *next;
	char *path;
	unsigned refs;
	unsigned long long issued;  /* tickets handed out (renames done) */
	unsigned long long synced;  /* tickets known durable */
	bool syncing;
};

static pthread_mutex_t dirsync_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t dirsync_done = PTHREAD_COND_INITIALIZER;
static struct dirsync *dirsyncs;

static int group_fsync_dir(const char *dir)
{
	struct dirsync *d;
	int result = 0, saved = 0;

	pthread_mutex_lock(&dirsync_lock);
	for (d = dirsyncs; d != NULL && strcmp(d->path, dir) != 0; d = d->next)
		;
	if (d == NULL) {
		d = calloc(1, sizeof(*d));
		if (d == NULL || (d->path = strdup(dir)) == NULL) {
			free(d);
			pthread_mutex_unlock(&dirsync_lock);
			return fsync_dir(dir); /* no memory for sharing: sync alone */
		}
		d->next = dirsyncs;
		dirsyncs = d;
	}
	d->refs++;
	unsigned long long ticket = ++d->issued;
	while (d->synced < ticket) {
		if (d->syncing) {
			pthread_cond_wait(&dirsync_done, &dirsync_lock);
			continue;
		}
		/* Everything issued so far was renamed before this fsync starts. */
		unsigned long long covers = d->issued;
		d->syncing = true;
		pthread_mutex_unlock(&dirsync_lock);
		int r = fsync_dir(dir);
		saved = errno;
		pthread_mutex_lock(&dirsync_lock);
		d->syncing = false;
		pthread_cond_broadcast(&dirsync_done);
		if (r < 0) {
			/* Ours failed: report it; waiters try their own fsync. */
			result = -1;
			break;
		}
		if (covers > d->synced)
			d->synced = covers;
	}
	if (--d->refs == 0) {
		struct dirsync **pp = &dirsyncs;
		while (*pp != d)
			pp = &(*pp)->next;
		*pp = d->next;
		free(d->path);
		free(d);
	}
	pthread_mutex_unlock(&dirsync_lock);
	errno = saved;
	return result;
}

/* Resolve a target's Maildir (folder included) into dir. */
static int target_dir(const struct maildir_state *st, const struct target *t, char *dir,
		      size_t size, const char **error_r)
{
	if (template_expand(st->path, &t->vars, TEMPLATE_PATH, dir, size, error_r) < 0)
		return -1;
	size_t len = strlen(dir);
	while (len > 1 && dir[len - 1] == '/')
		dir[--len] = '\0';
	if (st->settings.folder_from_detail && t->rcpt->detail[0] != '\0') {
		/* Maildir++ folder: ".detail", with '/' in the detail kept out of the path. */
		char folder[ADDRESS_LOCAL_MAX * 3 + 4];
		size_t f = 0;
		for (const char *p = t->rcpt->detail; *p && f + 4 < sizeof(folder); p++) {
			if (*p == '/' || (unsigned char)*p < 0x20)
				f += (size_t)snprintf(folder + f, sizeof(folder) - f, "%%%02X",
						      (unsigned char)*p);
			else
				folder[f++] = *p;
		}
		folder[f] = '\0';
		if (snprintf(dir + len, size - len, "/.%s", folder) >= (int)(size - len)) {
			*error_r = "path too long";
			return -1;
		}
	}
	return 0;
}

/*
 * A new directory survives a crash only once its parent was fsynced after the mkdir (the entry
 * lives in the parent), and tmp/ new/ cur/ only once the Maildir itself was. So creating a
 * Maildir fsyncs every directory created and the parent of each, up to the first directory
 * that already existed, before the delivery can answer 2xx. The 2xx of a message renamed into
 * an existing new/ must not overtake the fsyncs of a concurrent creation of that new/: creation
 * holds mailbox_create_lock for writing from the first mkdir to the last fsync, and the check
 * "does new/ exist?" holds it for reading, so it sees new/ either absent or durable.
 * Creation is rare (once per mailbox), the check a stat: the lock costs nothing measurable.
 * Writers are preferred, so a stream of checks cannot hold a creation back.
 */
static pthread_rwlock_t mailbox_create_lock = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;

/* fsync the directories made durable by a creation: the parent of path[0..created), then every
 * directory from path[0..created) down to path itself. */
static int fsync_created_chain(const char *path, size_t created)
{
	char dir[MAILDIR_PATH_MAX];
	size_t len = strlen(path);

	if (len >= sizeof(dir))
		return -1;
	memcpy(dir, path, len + 1);
	/* the parent of the first directory created: it already existed */
	char *slash = NULL;
	for (size_t i = created; i-- > 0;) {
		if (dir[i] == '/') {
			slash = dir + i;
			break;
		}
	}
	int r;
	if (slash == NULL) {
		r = fsync_dir(".");
	} else if (slash == dir) {
		r = fsync_dir("/");
	} else {
		*slash = '\0';
		r = fsync_dir(dir);
		*slash = '/';
	}
	if (r < 0)
		return -1;
	/* each directory created, shallowest first */
	for (size_t i = created; i <= len; i++) {
		if (i < len && dir[i] != '/')
			continue;
		if (i < len && i > 0 && dir[i - 1] == '/')
			continue; /* "a//b": one directory */
		dir[i] = '\0';
		r = fsync_dir(dir);
		if (i < len)
			dir[i] = '/';
		if (r < 0)
			return -1;
	}
	return 0;
}

/* Undo a creation that failed part-way: remove what this call made (subdirectories, the
 * folder mark, then the created chain deepest first), so the next attempt finds the mailbox
 * absent and creates and fsyncs all of it again. Left in place, half-made directories would
 * look existing to the next attempt, which would then skip their fsyncs and say 2xx on
 * directories that a crash can still lose. Best effort: errno is kept for the caller. */
static void undo_create(const char *dir, size_t created, const bool sub_created[3],
			bool mark_created)
{
	static const char *const subdirs[] = { "tmp", "new", "cur" };
	char path[MAILDIR_PATH_MAX + 32];
	int saved = errno;

	/* new/ first: it is what says "this mailbox exists". If it cannot go, keep everything,
	 * so a mailbox is never left with new/ but without tmp/ or cur/. */
	snprintf(path, sizeof(path), "%s/new", dir);
	if (sub_created[1] && rmdir(path) < 0) {
		errno = saved;
		return;
	}
	if (mark_created) {
		snprintf(path, sizeof(path), "%s/maildirfolder", dir);
		unlink(path);
	}
	for (size_t i = 3; i-- > 0;) {
		snprintf(path, sizeof(path), "%s/%s", dir, subdirs[i]);
		if (sub_created[i] && i != 1)
			rmdir(path);
	}
	if (created > 0 && strlen(dir) < sizeof(path)) {
		snprintf(path, sizeof(path), "%s", dir);
		for (size_t len = strlen(path); len >= created && len > 0;) {
			rmdir(path);
			while (len > 0 && path[len - 1] != '/')
				len--;
			while (len > 0 && path[len - 1] == '/')
				len--;
			path[len] = '\0';
		}
	}
	errno = saved;
}

static int create_maildir(const struct maildir_state *st, char *dir, bool is_folder)
{
	char sub[MAILDIR_PATH_MAX + 32];
	/* new/ last: its presence is what ensure_maildir takes as "this mailbox exists". */
	static const char *const order[] = { "tmp", "cur", "new" };
	static const size_t index_of[] = { 0, 2, 1 }; /* order[i] is subdirs[index_of[i]] */
	mode_t mode = (mode_t)st->settings.dir_mode;
	bool sub_created[3] = { false, false, false }; /* tmp, new, cur */
	bool dir_changed = false, mark_created = false;
	size_t created = 0;

	if (make_dirs(dir, mode, &created) < 0)
		goto fail;
	for (size_t i = 0; i < 3; i++) {
		snprintf(sub, sizeof(sub), "%s/%s", dir, order[i]);
		if (mkdir(sub, mode) < 0) {
			if (errno != EEXIST)
				goto fail;
		} else {
			sub_created[index_of[i]] = dir_changed = true;
		}
	}
	if (is_folder) {
		/* Maildir++ marks folders with an empty maildirfolder file. */
		snprintf(sub, sizeof(sub), "%s/maildirfolder", dir);
		int fd = open(sub, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			      (mode_t)st->settings.file_mode);
		if (fd >= 0) {
			close(fd);
			dir_changed = mark_created = true;
		}
	}
	if (!st->settings.fsync)
		return 0;
	static const char *const subdirs[] = { "tmp", "new", "cur" };
	for (size_t i = 0; i < 3; i++) {
		snprintf(sub, sizeof(sub), "%s/%s", dir, subdirs[i]);
		if (sub_created[i] && fsync_dir(sub) < 0)
			goto fail;
	}
	if (created > 0) {
		if (fsync_created_chain(dir, created) < 0) /* ends with dir itself */
			goto fail;
	} else if (dir_changed && fsync_dir(dir) < 0) {
		goto fail;
	}
	return 0;
fail:
	undo_create(dir, created, sub_created, mark_created);
	return -1;
}

static int ensure_maildir(const struct maildir_state *st, char *dir, bool is_folder)
{
	char sub[MAILDIR_PATH_MAX + 8];
	struct stat sb;

	snprintf(sub, sizeof(sub), "%s/new", dir);
	pthread_rwlock_rdlock(&mailbox_create_lock);
	int found = stat(sub, &sb);
	pthread_rwlock_unlock(&mailbox_create_lock);
	if (found == 0)
		return 0;
	if (!st->settings.create) {
		errno = ENOENT;
		return -1;
	}
	pthread_rwlock_wrlock(&mailbox_create_lock);
	int r = create_maildir(st, dir, is_folder);
	int saved = errno;
	pthread_rwlock_unlock(&mailbox_create_lock);
	errno = saved;
	return r;
}

/* Write one copy. With sync_later, new/ is not fsynced here: its path goes to sync_later and
 * the caller syncs it (and says 2xx) only after that. */
static void deliver_one(struct maildir_state *st, const struct delivery *d, struct target *t,
			char *sync_later)
{
	char dir[MAILDIR_PATH_MAX], tmp_path[MAILDIR_PATH_MAX + 128], new_path[MAILDIR_PATH_MAX + 160];
	char base[128], prefix[4096];
	const char *error;
	struct timeval tv;
	int fd;

	if (target_dir(st, t, dir, sizeof(dir), &error) < 0) {
		status_must(&t->status, 451, "4.3.0", "cannot resolve mailbox path");
		snprintf(t->ref, sizeof(t->ref), "error=%s", error);
		return;
	}
	if (ensure_maildir(st, dir, st->settings.folder_from_detail && t->rcpt->detail[0]) < 0) {
		status_from_errno(&t->status, errno, "cannot create mailbox");
		snprintf(t->ref, sizeof(t->ref), "dir=%s", dir);
		return;
	}
	size_t prefix_len = delivery_prefix(d, t, prefix, sizeof(prefix));
	if (prefix_len >= sizeof(prefix))
		prefix_len = sizeof(prefix) - 1;
	uint64_t size = prefix_len + spool_size(d->spool);

	gettimeofday(&tv, NULL);
	unsigned long n = atomic_fetch_add(&st->counter, 1);
	snprintf(base, sizeof(base), "%lld.M%06ldP%ldQ%lu.%s", (long long)tv.tv_sec,
		 (long)tv.tv_usec, (long)getpid(), n, st->host);
	snprintf(tmp_path, sizeof(tmp_path), "%s/tmp/%s", dir, base);
	snprintf(new_path, sizeof(new_path), "%s/new/%s,S=%llu", dir, base, (unsigned long long)size);

	fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)st->settings.file_mode);
	if (fd < 0) {
		status_from_errno(&t->status, errno, "cannot create message file");
		snprintf(t->ref, sizeof(t->ref), "dir=%s", dir);
		return;
	}
	if (spool_write_to_fd(d->spool, prefix, prefix_len, fd) < 0 ||
	    (st->settings.fsync && fsync(fd) < 0)) {
		int saved = errno;
		close(fd);
		unlink(tmp_path);
		status_from_errno(&t->status, saved, "cannot write message file");
		snprintf(t->ref, sizeof(t->ref), "dir=%s", dir);
		return;
	}
	if (close(fd) < 0 || rename(tmp_path, new_path) < 0) {
		int saved = errno;
		unlink(tmp_path);
		status_from_errno(&t->status, saved, "cannot store message file");
		snprintf(t->ref, sizeof(t->ref), "dir=%s", dir);
		return;
	}
	char new_dir[MAILDIR_PATH_MAX + 8];
	snprintf(new_dir, sizeof(new_dir), "%s/new", dir);
	if (sync_later != NULL)
		snprintf(sync_later, MAILDIR_PATH_MAX + 8, "%s", new_dir);
	else if (st->settings.fsync && group_fsync_dir(new_dir) < 0) {
		/* The file is in new/ but not known durable: say temporary, the client retries. */
		status_from_errno(&t->status, errno, "cannot sync mailbox directory");
		snprintf(t->ref, sizeof(t->ref), "file=%s", new_path);
		return;
	}
	status_must(&t->status, 250, "2.0.0", "stored (%s %s)", st->name, base);
	snprintf(t->ref, sizeof(t->ref), "%s", new_path);
}

/* Another recipient of the same message: hard-link the copy already stored and synced into
 * this recipient's new/ (the Maildir way, as Dovecot does), then sync that directory. The
 * bytes are written and fsynced once however many recipients there are. -1: cannot link
 * (another filesystem, a link limit, ...); the caller writes a copy instead. */
static int link_one(struct maildir_state *st, struct target *t, const char *source,
		    unsigned long long size, char *sync_later)
{
	char dir[MAILDIR_PATH_MAX], new_path[MAILDIR_PATH_MAX + 160], base[128];
	char new_dir[MAILDIR_PATH_MAX + 8];
	const char *error;
	struct timeval tv;

	if (target_dir(st, t, dir, sizeof(dir), &error) < 0 ||
	    ensure_maildir(st, dir, st->settings.folder_from_detail && t->rcpt->detail[0]) < 0)
		return -1;
	gettimeofday(&tv, NULL);
	unsigned long n = atomic_fetch_add(&st->counter, 1);
	snprintf(base, sizeof(base), "%lld.M%06ldP%ldQ%lu.%s", (long long)tv.tv_sec,
		 (long)tv.tv_usec, (long)getpid(), n, st->host);
	snprintf(new_path, sizeof(new_path), "%s/new/%s,S=%llu", dir, base, size);
	if (link(source, new_path) < 0)
		return -1;
	snprintf(new_dir, sizeof(new_dir), "%s/new", dir);
	if (sync_later != NULL) {
		snprintf(sync_later, MAILDIR_PATH_MAX + 8, "%s", new_dir);
	} else if (st->settings.fsync && group_fsync_dir(new_dir) < 0) {
		status_from_errno(&t->status, errno, "cannot sync mailbox directory");
		snprintf(t->ref, sizeof(t->ref), "file=%s", new_path);
		return 0;
	}
	status_must(&t->status, 250, "2.0.0", "stored (%s %s)", st->name, base);
	snprintf(t->ref, sizeof(t->ref), "%s", new_path);
	return 0;
}

struct dir_sync_job {
	const char *dir;
	int result;
	int error;
	pthread_t thread;
	bool threaded;
};

static void *dir_sync_run(void *arg)
{
	struct dir_sync_job *job = arg;
	job->result = group_fsync_dir(job->dir);
	job->error = errno;
	return NULL;
}

/* fsync several new/ directories at once: a directory fsync mostly waits for the disk, which
 * takes them in parallel, so five recipients cost about one fsync of wait, not five. */
static void sync_dirs(struct dir_sync_job *jobs, size_t count)
{
	for (size_t i = 1; i < count; i++)
		jobs[i].threaded = pthread_create(&jobs[i].thread, NULL, dir_sync_run, &jobs[i]) == 0;
	dir_sync_run(&jobs[0]);
	for (size_t i = 1; i < count; i++) {
		if (jobs[i].threaded)
			pthread_join(jobs[i].thread, NULL);
		else
			dir_sync_run(&jobs[i]); /* no thread to be had: in turn */
	}
}

/* All of a transaction's recipients of this backend: the first copy is written, the others
 * are links to it when the bytes are the same for everyone (no per-recipient Delivered-To).
 * With several recipients the new/ directories are synced together at the end, and no target
 * is 2xx before its directory's fsync returned. */
static void maildir_deliver(void *state, const struct delivery *delivery, struct target *targets,
			    size_t count)
{
	struct maildir_state *st = state;
	char source[sizeof(targets[0].ref)] = "";
	unsigned long long size = 0;
	bool defer = st->settings.fsync && count > 1;
	char (*dirs)[MAILDIR_PATH_MAX + 8] = defer ? calloc(count, sizeof(*dirs)) : NULL;
	struct dir_sync_job *jobs = defer ? calloc(count, sizeof(*jobs)) : NULL;

	if (dirs == NULL || jobs == NULL) {
		free(dirs); /* out of memory: sync each directory in turn */
		free(jobs);
		dirs = NULL;
		jobs = NULL;
	}
	for (size_t i = 0; i < count; i++) {
		char *later = dirs != NULL ? dirs[i] : NULL;
		if (source[0] != '\0' && link_one(st, &targets[i], source, size, later) == 0)
			continue;
		deliver_one(st, delivery, &targets[i], later);
		if (!delivery->delivered_to && status_class_of(&targets[i].status) == STATUS_OK &&
		    source[0] == '\0') {
			const char *s_eq = strstr(targets[i].ref, ",S=");
			snprintf(source, sizeof(source), "%s", targets[i].ref);
			size = s_eq != NULL ? strtoull(s_eq + 3, NULL, 10) : 0;
		}
	}
	if (dirs == NULL)
		return;
	/* One job per distinct directory (a user named twice, or a folder, shares one). */
	size_t njobs = 0;
	for (size_t i = 0; i < count; i++) {
		if (dirs[i][0] == '\0')
			continue; /* failed before the rename: its status says why */
		size_t j = 0;
		while (j < njobs && strcmp(jobs[j].dir, dirs[i]) != 0)
			j++;
		if (j == njobs)
			jobs[njobs++].dir = dirs[i];
	}
	if (njobs > 0)
		sync_dirs(jobs, njobs);
	for (size_t i = 0; i < count; i++) {
		if (dirs[i][0] == '\0')
			continue;
		for (size_t j = 0; j < njobs; j++) {
			if (strcmp(jobs[j].dir, dirs[i]) != 0 || jobs[j].result == 0)
				continue;
			/* In new/ but not known durable: temporary, the client retries. */
			char file[sizeof(targets[i].ref)];
			snprintf(file, sizeof(file), "%s", targets[i].ref);
			status_from_errno(&targets[i].status, jobs[j].error,
					  "cannot sync mailbox directory");
			snprintf(targets[i].ref, sizeof(targets[i].ref), "file=%s", file);
		}
	}
	free(dirs);
	free(jobs);
}

/* With create = false a recipient without a Maildir is unknown: say so at RCPT. */
static int maildir_verify(void *state, const struct recipient *rcpt,
			  const struct verify_context *ctx, struct status *st_r)
{
	struct maildir_state *st = state;
	struct target t = { .rcpt = rcpt };
	struct delivery d = { .sender = "" };
	char dir[MAILDIR_PATH_MAX + 8];
	const char *error;
	struct stat sb;

	(void)ctx; /* whether a Maildir exists does not depend on the envelope */
	if (st->settings.create || template_uses(st->path, "sha256") ||
	    template_uses(st->path, "msgid") || template_uses(st->path, "date") ||
	    template_uses(st->path, "sender"))
		return 0;
	delivery_vars(&d, rcpt, &t.vars);
	/* Verify the base Maildir: folders are created on demand inside an existing one. */
	if (template_expand(st->path, &t.vars, TEMPLATE_PATH, dir, sizeof(dir) - 5, &error) < 0)
		return 0;
	strcat(dir, "/new");
	if (stat(dir, &sb) < 0 && errno == ENOENT) {
		status_must(st_r, 550, "5.1.1", "no such mailbox");
		return -1;
	}
	return 0;
}

/* The Maildir (folder included) a target's copy goes to: with the recipient and the content,
 * what the memory of stored copies is keyed by (dedupe.h). */
static int maildir_dedupe_key(void *state, const struct target *t, char *key, size_t size)
{
	const char *error;

	return target_dir(state, t, key, size, &error);
}

static bool maildir_uses_sha256(void *state)
{
	return template_uses(((struct maildir_state *)state)->path, "sha256");
}

static void maildir_explain(void *state, const struct recipient *rcpt,
			    const struct template_vars *vars, char *buf, size_t size)
{
	struct maildir_state *st = state;
	struct target t = { .rcpt = rcpt, .vars = *vars };
	char dir[MAILDIR_PATH_MAX];
	const char *error;

	if (target_dir(st, &t, dir, sizeof(dir), &error) < 0)
		snprintf(buf, size, "path: %s", error);
	else
		snprintf(buf, size, "maildir %s/new/", dir);
}

/* The fixed part of the path (before the first variable) must exist or be creatable. */
static int maildir_probe(void *state, char *result, size_t size)
{
	struct maildir_state *st = state;
	const char *src = template_source(st->path);
	char base[MAILDIR_PATH_MAX];
	size_t n = strcspn(src, "%");

	snprintf(base, sizeof(base), "%.*s", (int)n, src);
	char *slash = strrchr(base, '/');
	if (slash != NULL && slash != base)
		*slash = '\0';
	else if (slash == NULL)
		snprintf(base, sizeof(base), ".");
	struct stat sb;
	while (stat(base, &sb) < 0) {
		/* Walk up to the nearest existing directory: that one must be writable. */
		char *up = strrchr(base, '/');
		if (up == NULL || up == base) {
			snprintf(base, sizeof(base), up == base ? "/" : ".");
			break;
		}
		*up = '\0';
	}
	if (access(base, W_OK | X_OK) < 0) {
		snprintf(result, size, "%s: not writable: %s", base, strerror(errno));
		return -1;
	}
	snprintf(result, size, "%s writable (path %s, fsync %s)", base, src,
		 st->settings.fsync ? "on" : "off");
	return 0;
}

const struct backend_driver backend_maildir = {
	.name = "maildir",
	.keys = maildir_keys,
	.settings_size = sizeof(struct maildir_settings),
	.open = maildir_open,
	.deliver = maildir_deliver,
	.close = maildir_close,
	.verify = maildir_verify,
	.uses_sha256 = maildir_uses_sha256,
	.probe = maildir_probe,
	.explain = maildir_explain,
	.dedupe_key = maildir_dedupe_key,
	.batch = true,
};
