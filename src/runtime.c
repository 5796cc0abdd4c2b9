/*
 * runtime - opened drivers, worker pools and breakers beside the immutable settings, carried
 * across a reload for every backend that did not change (runtime.h).
 */
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dedupe.h"
#include "metrics.h"
#include "pool.h"

/* Does this key name a file whose contents the driver reads at open() (a secret, a CA)? */
static bool key_names_files(const struct conf_key *key)
{
	size_t n = strlen(key->name);

	return (key->type == CONF_STRING && n > 5 && strcmp(key->name + n - 5, "_file") == 0) ||
	       (key->type == CONF_STRING_LIST && n > 6 && strcmp(key->name + n - 6, "_files") == 0);
}

static void print_file_identity(FILE *out, const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0) {
		fprintf(out, "file %s missing\n", path);
		return;
	}
	fprintf(out, "file %s %llu %llu %lld %lld.%09ld\n", path, (unsigned long long)st.st_dev,
		(unsigned long long)st.st_ino, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
		st.st_mtim.tv_nsec);
}

/* Everything that decides what open() builds: the settings as `-n` prints them, and the
 * identity (inode, size, mtime) of each file a *_file key names, so a rotated secret or CA
 * file makes the backend "changed" and SIGHUP picks it up. */
static char *fingerprint(const struct backend_instance *inst)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	if (out == NULL)
		abort();
	fprintf(out, "%s %s\n", inst->name, inst->driver->name);
	conf_print(out, backend_common_keys, &inst->common, 0);
	conf_print(out, inst->driver->keys, inst->settings, 0);
	for (const struct conf_key *key = inst->driver->keys; key->name != NULL; key++) {
		if (!key_names_files(key))
			continue;
		if (key->type == CONF_STRING) {
			const char *path = *(char *const *)(const void *)((const char *)inst->settings +
									  key->offset);
			if (path != NULL)
				print_file_identity(out, path);
		} else {
			const struct conf_strlist *list =
				(const void *)((const char *)inst->settings + key->offset);
			for (size_t i = 0; i < list->count; i++)
				print_file_identity(out, list->items[i]);
		}
	}
	if (fclose(out) != 0 || text == NULL)
		abort();
	return text;
}

static struct backend_runtime *backend_runtime_ref(struct backend_runtime *br)
{
	__atomic_add_fetch(&br->refcount, 1, __ATOMIC_RELAXED);
	return br;
}

static void backend_runtime_unref(struct backend_runtime **brp)
{
	struct backend_runtime *br = *brp;

	if (br == NULL)
		return;
	*brp = NULL;
	if (__atomic_sub_fetch(&br->refcount, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	/* Workers first: a queued job may still use the driver state. */
	if (br->pool != NULL)
		pool_free(&br->pool);
	br->inst->driver->close(br->state);
	free(br->fingerprint);
	config_unref(&br->origin);
	free(br);
}

struct pool *backend_runtime_pool(struct backend_runtime *br)
{
	if (br->pool == NULL) {
		char name[80];
		snprintf(name, sizeof(name), "backend-%s", br->inst->name);
		br->pool = pool_new(name, (unsigned)br->inst->common.concurrency);
		if (br->pool == NULL)
			abort();
	}
	return br->pool;
}

static struct backend_runtime *find_unchanged(const struct runtime *previous,
					      const struct backend_instance *inst, const char *fp)
{
	if (previous == NULL)
		return NULL;
	for (size_t i = 0; i < previous->cfg->backend_count; i++) {
		struct backend_runtime *old = previous->backends[i];
		if (strcmp(old->inst->name, inst->name) == 0 && old->inst->driver == inst->driver &&
		    strcmp(old->fingerprint, fp) == 0)
			return old;
	}
	return NULL;
}

struct runtime *runtime_open(struct config *cfg, const struct runtime *previous, char *error_r,
			     size_t error_size)
{
	struct runtime *rt = calloc(1, sizeof(*rt));

	if (rt == NULL)
		abort();
	rt->refcount = 1;
	rt->cfg = cfg;
	rt->backends = calloc(cfg->backend_count ? cfg->backend_count : 1, sizeof(*rt->backends));
	if (rt->backends == NULL)
		abort();
	for (size_t i = 0; i < cfg->backend_count; i++) {
		const struct backend_instance *inst = &cfg->backends[i];
		char *fp = fingerprint(inst);
		struct backend_runtime *old = find_unchanged(previous, inst, fp);

		if (old != NULL) {
			free(fp);
			rt->backends[i] = backend_runtime_ref(old);
			rt->kept++;
			continue;
		}
		struct backend_runtime *br = calloc(1, sizeof(*br));
		char msg[512] = "";
		if (br == NULL)
			abort();
		if (inst->driver->open(inst->settings, inst->name, &br->state, msg, sizeof(msg)) < 0) {
			snprintf(error_r, error_size, "%s:%d: backend '%s': %s", cfg->path, inst->line,
				 inst->name, msg[0] != '\0' ? msg : "cannot open");
			free(fp);
			free(br);
			runtime_unref(&rt);
			return NULL;
		}
		br->refcount = 1;
		br->origin = config_ref(cfg);
		br->inst = inst;
		br->fingerprint = fp;
		rt->backends[i] = br;
		rt->opened++;
	}
	/* The status page lists the backends of this configuration, traffic or not. */
	metrics_backends_configured_begin();
	for (size_t i = 0; i < cfg->backend_count; i++)
		metrics_backend_configured(cfg->backends[i].name, rt->backends[i]->origin == cfg);
	for (size_t i = 0; i < cfg->backend_count; i++) {
		const struct backend_runtime *br = rt->backends[i];
		if (br->inst->driver->uses_sha256 == NULL || br->inst->driver->uses_sha256(br->state))
			rt->need_sha256 = true;
		/* The memory of stored copies is keyed by the content digest. Opened on first use,
		 * in a worker: `check` and `-n` create no file, and the file is made by the user
		 * lmtpgw serves as. */
		if (cfg->dedupe_db != NULL && cfg->dedupe_db[0] != '\0' &&
		    br->inst->driver->dedupe_key != NULL) {
			rt->need_sha256 = true;
			if (rt->dedupe == NULL)
				rt->dedupe = dedupe_new(cfg->dedupe_db, cfg->dedupe_ttl_ms);
		}
	}
	return rt;
}

struct runtime *runtime_ref(struct runtime *rt)
{
	__atomic_add_fetch(&rt->refcount, 1, __ATOMIC_RELAXED);
	return rt;
}

void runtime_unref(struct runtime **rtp)
{
	struct runtime *rt = *rtp;

	if (rt == NULL)
		return;
	*rtp = NULL;
	if (__atomic_sub_fetch(&rt->refcount, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	/* Close in reverse order of opening. */
	for (size_t i = rt->cfg->backend_count; i-- > 0;)
		backend_runtime_unref(&rt->backends[i]);
	free(rt->backends);
	dedupe_free(&rt->dedupe);
	config_unref(&rt->cfg);
	free(rt);
}
