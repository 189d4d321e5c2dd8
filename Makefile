# zkflow - `make help` lists the targets.
#
# Quiet by default; `make V=1` shows the commands.  CC=clang works too.

PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= cc
B       ?= build
LUA     ?= lua5.4
BUSTED  ?= busted --lua=$(LUA)

PKGS     := lua5.4 libevent sqlite3
PKGS     += libcurl
PKGS     += libpq
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
            -Wmissing-prototypes -Wwrite-strings
CFLAGS   ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC $(WARN) $(CPPFLAGS) $(CFLAGS) \
            -Icore -Icore/include $(PKG_CFLAGS)
LIBS_NOLUA := -levent -lsqlite3 -lzookeeper_mt -lm -lpthread
LIBS_NOLUA += -lcurl
LIBS_NOLUA += -lpq
# The library exports what zkflow.h marks ZKF_EXPORT and nothing else.
CORE_CFLAGS := -fvisibility=hidden
# libzkflow.so.0.<minor>, SONAME libzkflow.so.0, from ZKF_VERSION "0.<minor>.x"
SO_MINOR := $(shell sed -n 's/^\#define ZKF_VERSION "0\.\([0-9]*\)\..*/\1/p' \
              core/include/zkflow.h)
SONAME   := libzkflow.so.0
SOFILE   := $(SONAME).$(SO_MINOR)
LIBS     := -llua5.4 $(LIBS_NOLUA)

ifeq ($(V),1)
Q :=
else
Q := @
endif

# core/<concern>/*.c, one folder per concern; core/cli is the binary's.
CORE_SRC := $(filter-out core/cli/%,$(wildcard core/*/*.c))
CORE_OBJ := $(CORE_SRC:core/%.c=$(B)/obj/%.o) $(B)/obj/lua_bundle.o
CORE_HDR := $(wildcard core/*/*.h)
CLI_SRC  := $(wildcard core/cli/*.c)
CLI_OBJ  := $(CLI_SRC:core/%.c=$(B)/obj/%.o)
LUAMOD_SRC := $(wildcard plugins/lua/*.c)
LUAMOD_OBJ := $(LUAMOD_SRC:plugins/lua/%.c=$(B)/obj/luamod/%.o)
LUA_SRC  := $(shell find lua -name '*.lua' 2>/dev/null | sort)
WEB_SRC  := $(shell find web -type f 2>/dev/null | sort)
CTEST_SRC := $(wildcard spec/c/test_*.c)
CTESTS   := $(CTEST_SRC:spec/c/%.c=$(B)/test/%)
HOSTS    := $(patsubst examples/host/%.c,$(B)/examples/%,$(wildcard examples/host/*.c))
# The man pages and the bash completion, made from the CLI's command table
# by the binary (tools/cli-docs.lua); $(B)/man/*.1 and $(B)/completion/zkflow.
CLIDOCS  := $(B)/man/zkflow.1

.PHONY: all lib test test-c test-lua test-asan test-valgrind bench lint \
        install install-lua clean help deps

all: $(B)/zkflow $(B)/libzkflow.a $(B)/libzkflow.so $(B)/zkflow.so \
     $(CTESTS) $(HOSTS) $(CLIDOCS)

help:
	@echo "make            build everything into $(B)/"
	@echo "make test       every suite: C unit tests (also ASan/UBSan and"
	@echo "                valgrind), busted specs, CLI tests; ends 'N passed, N failed'"
	@echo "make bench      benchmarks against ninja and Dask"
	@echo "make lint       luacheck"
	@echo "make deps       apt-get the Debian packages the build and tests need"
	@echo "make install    PREFIX=$(PREFIX) DESTDIR= (README: Install)"
	@echo "make install-lua  the Lua modules and zkflow/core.so only"
	@echo "make clean"

deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    build-essential clang pkg-config lua5.4 liblua5.4-dev libevent-dev \
	    libsqlite3-dev libjansson-dev lua-busted lua-check valgrind \
	    python3-croniter python3-dask ninja-build curl procps \
	    libzookeeper-mt-dev zookeeper python3-kazoo default-jre-headless \
	    libpq-dev postgresql \
	    nginx nginx-dev libnginx-mod-http-lua chromium \
	    debhelper dpkg-dev fakeroot lintian luarocks \
	    libcurl4-openssl-dev openssl bc man-db bsdextrautils

$(B)/obj/%.o: core/%.c $(CORE_HDR)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(CORE_CFLAGS) -c -o $@ $<

$(B)/obj/luamod/%.o: plugins/lua/%.c $(CORE_HDR)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The Lua standard library, compiled into the library as strings.
$(B)/gen/lua_bundle.c: $(LUA_SRC) $(WEB_SRC) tools/bundle.lua
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  GEN   $@")
	$(Q)$(LUA) tools/bundle.lua $@ $(LUA_SRC) $(WEB_SRC)

$(B)/obj/lua_bundle.o: $(B)/gen/lua_bundle.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(ALL_CFLAGS) $(CORE_CFLAGS) -c -o $@ $<

$(B)/libzkflow.a: $(CORE_OBJ)
	@$(if $(Q),echo "  AR    $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/$(SOFILE): $(CORE_OBJ)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) -o $@ $^ $(LIBS)

$(B)/libzkflow.so: $(B)/$(SOFILE)
	$(Q)ln -sf $(SOFILE) $(B)/$(SONAME) && ln -sf $(SOFILE) $@

$(B)/zkflow: $(CLI_OBJ) $(B)/libzkflow.a
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(B)/libzkflow.a $(LIBS)

# The Lua C module: no liblua here, the interpreter provides the symbols.
# It exports luaopen_zkflow_core only (--exclude-libs hides the archive's).
$(B)/zkflow.so: $(LUAMOD_OBJ) $(B)/libzkflow.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(LDFLAGS) -shared -o $@ $(LUAMOD_OBJ) -Wl,--whole-archive $(B)/libzkflow.a \
	    -Wl,--no-whole-archive -Wl,--exclude-libs,ALL $(LIBS_NOLUA)

$(B)/test/%: spec/c/%.c spec/c/test.h $(B)/libzkflow.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(B)/libzkflow.a $(LIBS)

# The JSON reader's differential test links jansson, the library does not.
$(B)/test/test_json: spec/c/test_json.c spec/c/test.h $(B)/libzkflow.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(B)/libzkflow.a $(LIBS) -ljansson

$(B)/examples/%: examples/host/%.c $(B)/libzkflow.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(B)/libzkflow.a $(LIBS)

# ---- tests --------------------------------------------------------------

test: all
	$(Q)B=$(B) LUA=$(LUA) sh spec/run-all.sh

test-c: all
	$(Q)B=$(B) SUITES="c abi asan valgrind" sh spec/run-all.sh

test-lua: all
	$(Q)B=$(B) LUA=$(LUA) SUITES="busted lint" sh spec/run-all.sh

# The same C tests built with sanitizers into their own tree.
asan:
	$(Q)$(MAKE) --no-print-directory B=build/asan CC=clang \
	    CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	    LDFLAGS="-fsanitize=address,undefined" \
	    LIBS="-fsanitize=address,undefined -llua5.4 $(LIBS_NOLUA)" \
	    build/asan/libzkflow.a $(CTEST_SRC:spec/c/%.c=build/asan/test/%)

bench: all
	$(Q)B=$(B) LUA=$(LUA) sh bench/run.sh

lint:
	$(Q)luacheck -q lua spec examples plugins bench

$(CLIDOCS): $(B)/zkflow tools/cli-docs.lua
	@$(if $(Q),echo "  DOCS  $(B)/man $(B)/completion")
	$(Q)ZKFLOW_CONFIG= $(B)/zkflow lua tools/cli-docs.lua $(B)

# ---- install ----------------------------------------------------------------
#
# PREFIX, DESTDIR as usual; the directories below default from PREFIX and
# can be set one by one (debian/rules sets the multiarch ones).  The Lua
# folders are lua5.4's default search paths under PREFIX.  The nginx module
# goes where Debian's nginx loads modules from (/usr/lib/nginx/modules) when
# PREFIX=/usr, otherwise under PREFIX; its mod-http-zkflow.conf snippet
# goes to share/nginx/modules-available as Debian's libnginx-mod-* ship it:
# `load_module modules/...` (nginx's prefix-relative path) under /usr, the
# absolute path elsewhere.
VERSION     := $(shell sed -n 's/^\#define ZKF_VERSION "\(.*\)"/\1/p' core/include/zkflow.h)
BINDIR      ?= $(PREFIX)/bin
LIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
LUA_LMOD    ?= $(PREFIX)/share/lua/5.4
LUA_CMOD    ?= $(PREFIX)/lib/lua/5.4
DOCDIR      ?= $(PREFIX)/share/doc/zkflow
NGX_MODDIR  ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/nginx/modules,$(PREFIX)/lib/nginx/modules)
NGX_CONFDIR ?= $(PREFIX)/share/nginx/modules-available
NGX_LOAD    := $(if $(filter /usr,$(PREFIX)),modules,$(NGX_MODDIR))
SYSTEMDDIR  ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
UNITS       := $(wildcard packaging/systemd/*.service)

$(B)/zkflow.pc: packaging/zkflow.pc.in core/include/zkflow.h
	$(Q)sed -e 's|@PREFIX@|$(PREFIX)|' \
	    -e 's|@LIBDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(LIBDIR))|' \
	    -e 's|@INCLUDEDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))|' -e 's|@VERSION@|$(VERSION)|' $< > $@

# PREFIX and the directories are baked in: remade every time.  Paths under
# PREFIX are written ${prefix}/... so that pkg-config --define-prefix
# finds a staged or moved tree.
.PHONY: $(B)/zkflow.pc

# The Lua modules and zkflow/core.so alone (the rockspec's install step).
install-lua: $(B)/zkflow.so
	$(Q)install -d $(DESTDIR)$(LUA_LMOD) $(DESTDIR)$(LUA_CMOD)/zkflow
	$(Q)install -m 644 $(B)/zkflow.so $(DESTDIR)$(LUA_CMOD)/zkflow/core.so
	$(Q)cd lua && find zkflow -name '*.lua' -exec install -D -m 644 {} \
	    $(DESTDIR)$(LUA_LMOD)/{} \;
	$(Q)$(LUA) tools/bundle.lua --assets \
	    $(DESTDIR)$(LUA_LMOD)/zkflow/web_assets.lua $(WEB_SRC)

install: install-lua $(B)/zkflow $(B)/libzkflow.a $(B)/libzkflow.so $(B)/zkflow.pc $(CLIDOCS)
	$(Q)install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
	    $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(SYSUSERSDIR)
	$(Q)install -m 755 $(B)/zkflow $(DESTDIR)$(BINDIR)/zkflow
	$(Q)install -m 644 $(B)/libzkflow.a $(DESTDIR)$(LIBDIR)/
	$(Q)install -m 644 $(B)/$(SOFILE) $(DESTDIR)$(LIBDIR)/
	$(Q)ln -sf $(SOFILE) $(DESTDIR)$(LIBDIR)/$(SONAME)
	$(Q)ln -sf $(SOFILE) $(DESTDIR)$(LIBDIR)/libzkflow.so
	$(Q)install -m 644 core/include/zkflow.h $(DESTDIR)$(INCLUDEDIR)/
	$(Q)install -m 644 $(B)/zkflow.pc $(DESTDIR)$(PKGCONFIGDIR)/
	$(Q)install -m 644 README.md $(DESTDIR)$(DOCDIR)/
	$(Q)cp -R docs examples $(DESTDIR)$(DOCDIR)/
	$(Q)for u in $(UNITS); do \
	    sed 's|@BINDIR@|$(BINDIR)|g' $$u > $(DESTDIR)$(SYSTEMDDIR)/$${u##*/} && \
	    chmod 644 $(DESTDIR)$(SYSTEMDDIR)/$${u##*/} || exit 1; done
	$(Q)install -m 644 packaging/systemd/zkflow.sysusers $(DESTDIR)$(SYSUSERSDIR)/zkflow.conf
	$(Q)install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR)
	$(Q)install -m 644 $(B)/man/*.1 $(DESTDIR)$(MANDIR)/man1/
	$(Q)install -m 644 $(B)/completion/zkflow $(DESTDIR)$(BASHCOMPDIR)/zkflow
	$(Q)install -m 644 packaging/zkflow.conf $(DESTDIR)$(DOCDIR)/zkflow.conf.example

clean:
	rm -rf build

# ---- nginx module (only where Debian's nginx-dev is installed) -------------
#
# nginx builds dynamic modules from its own source tree: configure a copy
# of the tree that nginx-dev ships with the flags the packaged nginx was
# built with (conf_flags; --with-compat makes the module binary-compatible)
# and `make modules` there.  Offline; a no-op without nginx-dev.

NGX_SRC    ?= /usr/share/nginx/src
NGX_BUILD  := $(B)/nginx
NGX_MODULE := $(if $(wildcard $(NGX_SRC)/configure),$(B)/ngx_http_zkflow_module.so)
NGX_LUA_A  ?= /usr/lib/$(shell $(CC) -print-multiarch 2>/dev/null)/liblua5.4.a
# nginx's make must not see our command-line variables (CFLAGS, CC...).
NGX_MAKE   := env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL $(MAKE)

# configure bakes the libraries in: configure again when they change
NGX_FLAGS  := $(B)/nginx.flags
ifneq ($(NGX_MODULE),)
$(shell mkdir -p $(B) && { echo '$(LIBS_NOLUA) $(NGX_LUA_A)' | cmp -s - $(NGX_FLAGS) || \
    echo '$(LIBS_NOLUA) $(NGX_LUA_A)' > $(NGX_FLAGS); })
endif

all: $(NGX_MODULE)

$(NGX_BUILD)/Makefile: plugins/nginx/config $(NGX_FLAGS)
	@$(if $(Q),echo "  CONF  $(NGX_BUILD)")
	$(Q)rm -rf $(NGX_BUILD) && mkdir -p $(NGX_BUILD) && cp -R $(NGX_SRC)/. $(NGX_BUILD)/
	$(Q)cd $(NGX_BUILD) && ZKFLOW_BUILD=$(abspath $(B)) ZKFLOW_LUA_A=$(NGX_LUA_A) \
	    ZKFLOW_LIBS="$(LIBS_NOLUA)" \
	    bash -c '. ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" \
	        --with-cc-opt="-g -O2 -fPIC" --with-ld-opt="-fPIC" \
	        --add-dynamic-module=$(abspath plugins/nginx)' > configure.log 2>&1 \
	    || { tail -n 20 $(NGX_BUILD)/configure.log; exit 1; }

$(B)/ngx_http_zkflow_module.so: $(NGX_BUILD)/Makefile $(B)/libzkflow.a \
        $(wildcard plugins/nginx/*.c plugins/nginx/*.map) core/include/zkflow.h
	@$(if $(Q),echo "  NGX   $@")
	$(Q)rm -f $(NGX_BUILD)/objs/ngx_http_zkflow_module.so
	$(Q)$(NGX_MAKE) -s -C $(NGX_BUILD) -f objs/Makefile modules > $(NGX_BUILD)/make.log 2>&1 \
	    || { cat $(NGX_BUILD)/make.log; exit 1; }
	@# a new inode: a running nginx has the old one mapped
	$(Q)cp $(NGX_BUILD)/objs/ngx_http_zkflow_module.so $@.tmp && mv -f $@.tmp $@

# `make install` adds the module where it is built.
ifneq ($(NGX_MODULE),)
install: install-nginx
endif

.PHONY: install-nginx
install-nginx: $(NGX_MODULE)
	$(Q)install -d $(DESTDIR)$(NGX_MODDIR) $(DESTDIR)$(NGX_CONFDIR)
	$(Q)install -m 644 $(NGX_MODULE) $(DESTDIR)$(NGX_MODDIR)/
	$(Q)echo 'load_module $(NGX_LOAD)/ngx_http_zkflow_module.so;' \
	    > $(DESTDIR)$(NGX_CONFDIR)/mod-http-zkflow.conf
	$(Q)chmod 644 $(DESTDIR)$(NGX_CONFDIR)/mod-http-zkflow.conf
