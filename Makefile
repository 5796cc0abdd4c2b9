# lmtpgw - GNU Make build. `make run` and `make check` are the two commands of the README.
#
#   make                 build build/lmtpgw
#   make run             install missing Debian packages, build, serve conf/lmtpgw.conf
#   make check           install missing packages, build, run unit + integration tests
#   make check SANITIZE=address,undefined     the same under ASan/UBSan
#   make check VALGRIND=1                     integration tests with lmtpgw under valgrind
#   make check DEEP=1                         also ASan/UBSan, valgrind and a brief fuzz run
#                                             (automatic in CI, where CI=true)
#   make deps            only install missing Debian packages
#   make install PREFIX=/usr/local DESTDIR=   (SYSTEMDDIR=$(PREFIX)/lib/systemd/system)
#   make deb             $(BUILD)/lmtpgw_VERSION_ARCH.deb with dpkg-buildpackage (debian/)
#   make fuzz FUZZ_SECONDS=60                 libFuzzer targets (tests/fuzz/), each run that long

CC       ?= cc
PREFIX   ?= /usr/local
DESTDIR  ?=
SYSTEMDDIR  ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
BUILD    ?= build
SANITIZE ?=
VALGRIND ?=

PKGS     := libevent libevent_pthreads libevent_openssl libconfig openssl libcurl jansson libetpan libmicrohttpd sqlite3
TEST_PKGS := criterion

# Debian packages the build and the tests need (make deps installs the missing ones).
DEB_BUILD := build-essential pkg-config dpkg-dev libevent-dev libconfig-dev libssl-dev \
             libcurl4-gnutls-dev libjansson-dev libetpan-dev libsasl2-modules libmicrohttpd-dev \
             libsqlite3-dev
DEB_TEST  := libcriterion-dev swaks postfix dovecot-imapd dovecot-lmtpd python3 valgrind nodejs python3-botocore clang libclang-rt-14-dev \
             chromium prometheus rsyslog debhelper lintian fakeroot python3-cryptography

# Debian's libetpan.pc leaks -specs=/usr/share/dpkg/no-pie-link.specs: drop it (else gcc links
# non-PIE silently and clang warns, fatal under -Werror).
pkg_cflags = $(filter-out -specs=%,$(shell pkg-config --cflags $(1) 2>/dev/null))
pkg_libs   = $(filter-out -specs=%,$(shell pkg-config --libs $(1) 2>/dev/null))

CFLAGS   ?= -O2 -g
WARN     := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes \
            -Wno-unused-parameter -Wno-missing-field-initializers
# (missing-field-initializers: a conf_key row leaves its trailing `values` out unless it is an
# enum; C zero-fills omitted members, which is what those rows mean.)
# gcc warns about every intended snprintf truncation; clang has no such option.
ifeq ($(shell $(CC) --version 2>/dev/null | grep -q clang && echo clang),)
WARN     += -Wno-format-truncation
endif
ALL_CFLAGS := -std=c17 -D_GNU_SOURCE $(WARN) $(CFLAGS) -Iinclude $(call pkg_cflags,$(PKGS)) \
              -fstack-protector-strong -D_FORTIFY_SOURCE=2 -MMD -MP
LDLIBS   := $(call pkg_libs,$(PKGS)) -lpthread
ifneq ($(SANITIZE),)
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -U_FORTIFY_SOURCE -O1
LDFLAGS    += -fsanitize=$(SANITIZE)
endif

SRCS      := $(wildcard src/*.c) $(wildcard src/backends/*.c)
OBJS      := $(patsubst %.c,$(BUILD)/%.o,$(SRCS))
LIB_OBJS  := $(filter-out $(BUILD)/src/main.o,$(OBJS))
UNIT_SRCS := $(wildcard tests/unit/*.c)
UNIT_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(UNIT_SRCS))

.PHONY: all run check deps unit integration install clean distclean soak fuzz fuzz-build bench deb

all: $(BUILD)/lmtpgw

# Rebuild everything when the flags change (a stamp holds the last set).
$(BUILD)/.flags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(ALL_CFLAGS) $(LDFLAGS)' | cmp -s - $@ || echo '$(CC) $(ALL_CFLAGS) $(LDFLAGS)' > $@
FORCE:

$(BUILD)/%.o: %.c $(BUILD)/.flags
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/lmtpgw: $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

$(BUILD)/unit-tests: $(UNIT_OBJS) $(LIB_OBJS)
	$(CC) $(LDFLAGS) -o $@ $(UNIT_OBJS) $(LIB_OBJS) $(LDLIBS) $(call pkg_libs,$(TEST_PKGS))

deps:
	@sh contrib/install-deps.sh $(DEB_BUILD) $(if $(filter check,$(MAKECMDGOALS)),$(DEB_TEST))

run: deps
	@$(MAKE) --no-print-directory all
	@mkdir -p var
	./$(BUILD)/lmtpgw -f -c conf/lmtpgw.conf

unit: $(BUILD)/unit-tests
	./$(BUILD)/unit-tests

check: deps
	@$(MAKE) --no-print-directory all $(BUILD)/unit-tests
	@sh contrib/test-servers/setup.sh
	python3 tests/check.py --build $(BUILD) $(if $(VALGRIND),--valgrind) $(if $(filter true,$(CI))$(DEEP),--deep)

# Everything goes under $(DESTDIR)$(PREFIX); nothing needs root when DESTDIR is set. The systemd
# units get ExecStart=$(PREFIX)/sbin/lmtpgw (contrib/systemd/README.md).
# Long soak with faults injected per request on every backend (tests/integration/soak.py):
# prints the counts, fails on any loss, partial copy or wrong 5xx, or when too few faults fired.
SOAK_MESSAGES ?= 20000
soak: deps
	@$(MAKE) --no-print-directory all
	@sh contrib/test-servers/setup.sh
	python3 tests/integration/soak.py --messages $(SOAK_MESSAGES) --sessions 10

install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8 \
	           $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/doc/lmtpgw/examples \
	           $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(SYSUSERSDIR)
	install -m 0755 $(BUILD)/lmtpgw $(DESTDIR)$(PREFIX)/sbin/lmtpgw
	install -m 0644 docs/man/lmtpgw.8 $(DESTDIR)$(PREFIX)/share/man/man8/lmtpgw.8
	install -m 0644 docs/man/lmtpgw.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/lmtpgw.conf.5
	install -m 0644 conf/lmtpgw.conf $(wildcard conf/examples/*.conf) $(DESTDIR)$(PREFIX)/share/doc/lmtpgw/examples/
	sed 's|/usr/local/sbin/lmtpgw|$(PREFIX)/sbin/lmtpgw|g' contrib/systemd/lmtpgw.service \
		> $(DESTDIR)$(SYSTEMDDIR)/lmtpgw.service
	chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/lmtpgw.service
	install -m 0644 contrib/systemd/lmtpgw.socket $(DESTDIR)$(SYSTEMDDIR)/lmtpgw.socket
	install -m 0644 contrib/systemd/lmtpgw.sysusers $(DESTDIR)$(SYSUSERSDIR)/lmtpgw.conf

# The Debian package (debian/): dpkg-buildpackage -b in a copy of the tree under a temp dir
# (without .git, build dirs, npm modules or var/), so nothing of this checkout's build/ can end
# up in the package and the checkout gets no debian/build, debian/lmtpgw or ../*.deb litter.
# The version is debian/changelog's; LMTPGW_VERSION in src/main.c must agree.
DEB_VERSION := $(shell dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null)
DEB_ARCH    := $(shell dpkg-architecture -qDEB_HOST_ARCH 2>/dev/null)
DEB_FILE    := $(BUILD)/lmtpgw_$(DEB_VERSION)_$(DEB_ARCH).deb

deb:
	@grep -q '^#define LMTPGW_VERSION "$(DEB_VERSION)"' src/main.c || \
		{ echo "debian/changelog version $(DEB_VERSION) differs from LMTPGW_VERSION in src/main.c"; exit 1; }
	@mkdir -p $(BUILD)
	@tmp=$$(mktemp -d /tmp/lmtpgw-deb.XXXXXX) && src=$$tmp/lmtpgw-$(DEB_VERSION) && \
	mkdir $$src && \
	tar -C . --exclude=.git --exclude='./build' --exclude='./build-*' --exclude=node_modules \
		--exclude='./var' --exclude=__pycache__ --exclude='./debian/build' \
		--exclude='./debian/lmtpgw' -cf - . | tar -C $$src -xf - && \
	(cd $$src && dpkg-buildpackage -b -us -uc) > $$tmp/build.log 2>&1 || \
		{ tail -40 $$tmp/build.log; echo "make deb: failed, log in $$tmp/build.log"; exit 1; }; \
	cp $$tmp/lmtpgw_$(DEB_VERSION)_$(DEB_ARCH).deb $(DEB_FILE) && rm -rf $$tmp && \
	echo "$(DEB_FILE)"

# Fuzzing (tests/fuzz/README.md): every tests/fuzz/fuzz_*.c is a libFuzzer target, built with
# clang and ASan/UBSan into build-fuzz/ and run FUZZ_SECONDS with its seed corpus; new inputs
# go to build-fuzz/corpus/<target>, crashes to build-fuzz/crashes/.
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build-fuzz
FUZZ_NAMES   := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))

fuzz:
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=clang SANITIZE=address,undefined \
		CFLAGS='-g -fsanitize=fuzzer-no-link -fno-sanitize-recover=all' fuzz-build
	@mkdir -p $(FUZZ_BUILD)/crashes
	@for t in $(FUZZ_NAMES); do \
		mkdir -p $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
		LSAN_OPTIONS=suppressions=tests/fuzz/lsan.supp:print_suppressions=0 \
		./$(FUZZ_BUILD)/$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=$(FUZZ_BUILD)/crashes/$$t- \
			$(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t || exit 1; \
	done

fuzz-build: $(patsubst %,$(BUILD)/%,$(FUZZ_NAMES))

$(BUILD)/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(LIB_OBJS)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)
.PRECIOUS: $(BUILD)/tests/fuzz/%.o

# lmtpgw beside smtp-sink and Dovecot (docs/performance.md): make bench BENCH_ARGS=--quick
bench: all
	python3 tests/bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(BUILD)

-include $(OBJS:.o=.d) $(UNIT_OBJS:.o=.d)
