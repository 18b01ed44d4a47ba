# proxystore: build, test and benchmark.
#
#   make          the C core (build/lib/proxystore/core.so) and the host binary
#   make deps     install missing Debian packages (apt-get; needs root)
#   make demo     what the demo needs (and no more), then the MapReduce demo
#   make test     deps + build + every spec, then again under ASan+UBSan
#   make check    build + every spec on the plain build (luarocks test)
#   make dist     proxystore-<version>-1.src.rock from this checkout
#   make bench    benchmarks, a markdown table on stdout
#   make install  PREFIX (default /usr/local) and DESTDIR: the module, the Lua
#                 files, the binary, proxystore.h, libproxystore.a and
#                 proxystore.pc; make uninstall removes exactly those
#   make examples examples/embed/host (a C host embedding Lua + proxystore)
#   make fuzz     builds the decoder's libFuzzer target (build-fuzz/) and runs
#                 it for FUZZ_SECONDS (default 60) from the corpus in fuzz/

LUA      ?= lua5.4
PKG      ?= pkg-config
CC       ?= cc
PREFIX   ?= /usr/local

# Lua 5.4's headers and library. luarocks passes LUA_INCDIR (LUA_LIBDIR and
# LUALIB, the library's file name, when a luarocks gives them); otherwise
# pkg-config, under any of the names distributions give Lua 5.4's .pc;
# otherwise the first of those names the linker finds a Lua 5.4 under.
LUA_PC := $(firstword $(foreach n,lua5.4 lua-5.4 lua54 lua,$(shell \
  $(PKG) --atleast-version=5.4 --max-version=5.4.99 $(n) 2>/dev/null && echo $(n))))
ifeq ($(origin LUA_CFLAGS),undefined)
  ifneq ($(LUA_INCDIR),)
    LUA_CFLAGS := -I$(LUA_INCDIR)
  else ifneq ($(LUA_PC),)
    LUA_CFLAGS := $(shell $(PKG) --cflags $(LUA_PC))
  endif
endif
ifeq ($(origin LUA_LIBS),undefined)
  ifneq ($(LUALIB),)
    LUA_LIBS := $(if $(LUA_LIBDIR),-L$(LUA_LIBDIR)) -l:$(LUALIB)
  else ifneq ($(LUA_PC),)
    LUA_LIBS := $(shell $(PKG) --libs $(LUA_PC))
  else
    LUA_LIBS := $(firstword $(shell for l in lua5.4 lua-5.4 lua54 lua; do \
      printf 'char lua_newuserdatauv(void);\nint main(void) { return lua_newuserdatauv(); }\n' | \
      $(CC) -x c - -o /dev/null -l$$l -lm -ldl 2>/dev/null && echo -l$$l; done) -llua5.4)
  endif
endif
HIREDIS_CFLAGS := $(shell $(PKG) --cflags hiredis 2>/dev/null)
HIREDIS_LIBS   := $(shell $(PKG) --libs hiredis 2>/dev/null || echo -lhiredis)
# libcrypto (OpenSSL) signs the queue pool's task messages (HMAC-SHA256).
CRYPTO_CFLAGS  := $(shell $(PKG) --cflags libcrypto 2>/dev/null)
CRYPTO_LIBS    := $(shell $(PKG) --libs libcrypto 2>/dev/null || echo -lcrypto)
# The binary's prompt: libedit's readline interface (BSD-licensed).
EDIT_CFLAGS    ?=
EDIT_LIBS      ?= -ledit

WARN     := -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
OPT      ?= -O2 -g
LIBFLAG  ?= -shared
CPPFLAGS += -D_GNU_SOURCE
# One folder per layer: core (proxies, codec, errors), store (stores, cache,
# file backend), redis (connection, backend), pool, host (the binary and the
# C API). Every folder is on the include path, so a file includes its
# neighbours' headers by name.
SRC_DIRS := $(sort $(dir $(wildcard src/*/*.c)))
INCLUDES := -Isrc $(SRC_DIRS:%/=-I%)
ALL_CFLAGS = $(WARN) $(OPT) -fPIC $(CPPFLAGS) $(INCLUDES) $(LUA_CFLAGS) $(HIREDIS_CFLAGS) \
             $(CRYPTO_CFLAGS) $(EDIT_CFLAGS) $(CFLAGS)
LIBS     := $(HIREDIS_LIBS) $(CRYPTO_LIBS) -lpthread -lm

HOST_SRC := $(wildcard src/host/main.c src/host/worker_cmd.c)
EMBED_SRC := src/host/embed.c
CORE_SRC := $(filter-out $(HOST_SRC) $(EMBED_SRC),$(wildcard src/*/*.c))
HEADERS  := $(wildcard src/*.h src/*/*.h)
LUA_SRC  := $(wildcard lua/proxystore/*.lua)
# The version: the three numbers of src/proxystore.h, where it is defined once.
version_part = $(shell sed -n 's/^\#define PROXYSTORE_VERSION_$(1) \([0-9]*\)$$/\1/p' src/proxystore.h)
VERSION  := $(call version_part,MAJOR).$(call version_part,MINOR).$(call version_part,PATCH)

BUILD    ?= build
CORE_OBJ  = $(CORE_SRC:src/%.c=$(BUILD)/obj/%.o)
CORE_SO   = $(BUILD)/lib/proxystore/core.so
HOST_BIN  = $(if $(HOST_SRC),$(BUILD)/bin/proxystore)
# For C hosts: the core, the C API (embed.c) and the Lua modules compiled in.
LIB_A     = $(BUILD)/lib/libproxystore.a
LUASRC_C  = $(BUILD)/gen/luasrc.inc
EMBED_OBJ = $(BUILD)/obj/host/embed.o

SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: demo all deps test check dist bench clean asan fuzz lib install \
        uninstall examples rock-install
all: $(CORE_SO) $(HOST_BIN)

# What goes into a build depends on the flags it was made with: a build/
# from a plain make is rebuilt, not reused, when luarocks builds with its
# own CFLAGS (and the other way round). The stamp's name is their checksum.
FLAGS_ID = $(shell printf '%s' '$(subst ','\'',$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) \
  $(LIBS) $(LUA_LIBS) $(EDIT_LIBS))' | cksum | cut -d' ' -f1)
FLAGS_STAMP := $(BUILD)/.flags-$(FLAGS_ID)
$(FLAGS_STAMP):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/.flags-* && touch $@

$(BUILD)/obj/%.o: src/%.c $(HEADERS) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(CORE_SO): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(OPT) $(LDFLAGS) -o $@ $(CORE_OBJ) $(LIBS)

# The host binary links the core in and preloads it; -Wl,-E lets other C
# modules it loads find the Lua API (as lua(1) does).
$(BUILD)/bin/proxystore: $(HOST_SRC:src/%.c=$(BUILD)/obj/%.o) $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(OPT) -Wl,-E $(LDFLAGS) -o $@ $^ $(LUA_LIBS) $(LIBS) $(EDIT_LIBS) -ldl

# The Lua modules as C strings, so an embedding host needs no Lua path.
$(LUASRC_C): tools/luasrc.lua $(LUA_SRC)
	@mkdir -p $(dir $@)
	$(LUA) tools/luasrc.lua $@ $(LUA_SRC)

$(BUILD)/obj/host/embed.o: src/host/embed.c $(HEADERS) $(LUASRC_C) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DPS_LUASRC='"$(abspath $(LUASRC_C))"' -c $< -o $@

# One relocatable object in which only the C API is global, so a host's own
# symbols never collide with the core's internal ones.
OBJCOPY ?= objcopy
$(BUILD)/obj/libproxystore.o: $(CORE_OBJ) $(EMBED_OBJ)
	$(CC) -r -nostdlib -o $@ $^
	$(OBJCOPY) --wildcard --keep-global-symbol='proxystore_*' \
	  --keep-global-symbol=luaopen_proxystore_core $@

$(LIB_A): $(BUILD)/obj/libproxystore.o
	@mkdir -p $(dir $@); rm -f $@
	$(AR) rcs $@ $^

lib: $(LIB_A)

examples: examples/embed/host

examples/embed/host: examples/embed/host.c src/proxystore.h $(LIB_A)
	$(CC) $(WARN) $(OPT) $(CPPFLAGS) -Isrc $(LUA_CFLAGS) -o $@ $< $(LIB_A) \
	  $(LUA_LIBS) $(LIBS)

# make install: PREFIX is where things will live, DESTDIR a staging root.
# proxystore.pc finds its prefix from its own place (${pcfiledir}), so it
# also works from a DESTDIR tree (pkg-config's sysroot would re-root the
# lua5.4 it requires as well) and after the tree is moved; libdir and
# includedir are written relative to the prefix, so LIBDIR or INCLUDEDIR
# outside PREFIX/lib (a multiarch libdir) still come out right.
LUA_VERSION  ?= 5.4
BINDIR       ?= $(PREFIX)/bin
INCLUDEDIR   ?= $(PREFIX)/include
LIBDIR       ?= $(PREFIX)/lib
INSTALL_CMOD ?= $(LIBDIR)/lua/$(LUA_VERSION)
INSTALL_LMOD ?= $(PREFIX)/share/lua/$(LUA_VERSION)
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
INSTALL      ?= install

relpath = $(shell realpath -m --relative-to='$(2)' '$(1)')
PC_FILE = $(BUILD)/pc/$(subst /,_,$(PREFIX)_$(LIBDIR)_$(INCLUDEDIR)_$(PKGCONFIGDIR))/proxystore.pc

$(PC_FILE): Makefile src/proxystore.h
	@mkdir -p $(dir $@)
	printf '%s\n' 'prefix=$${pcfiledir}/$(call relpath,$(PREFIX),$(PKGCONFIGDIR))' \
	  'libdir=$${prefix}/$(call relpath,$(LIBDIR),$(PREFIX))' \
	  'includedir=$${prefix}/$(call relpath,$(INCLUDEDIR),$(PREFIX))' '' 'Name: proxystore' \
	  'Description: lazy object proxies for Lua 5.4 (C API for embedding hosts)' \
	  'Version: $(VERSION)' 'Requires: lua5.4' \
	  'Libs: -L$${libdir} -lproxystore $(HIREDIS_LIBS) $(CRYPTO_LIBS) -lpthread -lm' \
	  'Cflags: -I$${includedir}' > $@

install: all $(LIB_A) $(PC_FILE)
	$(INSTALL) -d $(DESTDIR)$(INSTALL_CMOD)/proxystore $(DESTDIR)$(INSTALL_LMOD)/proxystore \
	  $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR)
	$(INSTALL) -m 755 $(CORE_SO) $(DESTDIR)$(INSTALL_CMOD)/proxystore/core.so
	$(INSTALL) -m 644 $(LUA_SRC) $(DESTDIR)$(INSTALL_LMOD)/proxystore/
	$(INSTALL) -m 644 src/proxystore.h $(DESTDIR)$(INCLUDEDIR)/proxystore.h
	$(INSTALL) -m 644 $(LIB_A) $(DESTDIR)$(LIBDIR)/libproxystore.a
	$(INSTALL) -m 644 $(PC_FILE) $(DESTDIR)$(PKGCONFIGDIR)/proxystore.pc
	$(if $(HOST_BIN),$(INSTALL) -d $(DESTDIR)$(BINDIR))
	$(if $(HOST_BIN),$(INSTALL) -m 755 $(HOST_BIN) $(DESTDIR)$(BINDIR)/proxystore)

# Removes exactly what install put (and proxystore's own directories).
uninstall:
	rm -f $(DESTDIR)$(INSTALL_CMOD)/proxystore/core.so \
	  $(LUA_SRC:lua/proxystore/%=$(DESTDIR)$(INSTALL_LMOD)/proxystore/%) \
	  $(DESTDIR)$(INCLUDEDIR)/proxystore.h $(DESTDIR)$(LIBDIR)/libproxystore.a \
	  $(DESTDIR)$(PKGCONFIGDIR)/proxystore.pc $(DESTDIR)$(BINDIR)/proxystore
	rmdir $(DESTDIR)$(INSTALL_CMOD)/proxystore $(DESTDIR)$(INSTALL_LMOD)/proxystore \
	  2>/dev/null || true

# The rockspec's install step: luarocks passes its rock directories.
rock-install: all
	$(INSTALL) -d $(LIBDIR)/proxystore $(LUADIR)/proxystore
	$(INSTALL) -m 755 $(CORE_SO) $(LIBDIR)/proxystore/core.so
	$(INSTALL) -m 644 $(LUA_SRC) $(LUADIR)/proxystore/
	$(if $(HOST_BIN),$(INSTALL) -d $(BINDIR))
	$(if $(HOST_BIN),$(INSTALL) -m 755 $(HOST_BIN) $(BINDIR)/proxystore)

asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g $(SANITIZE)" LDFLAGS="$(SANITIZE)" all lib

deps:
	@sh .ci/deps.sh

test: deps
	@$(MAKE) --no-print-directory all lib asan >/dev/null
	@sh spec/run.sh

# The specs on the plain build (no sanitizers, no fuzzing), as luarocks
# test runs them. SPECS: files to run instead of all of spec/.
check:
	@sh spec/run.sh plain $(SPECS)

# A source rock from this checkout, as luarocks pack makes one from the
# rockspec's git URL (the rockspec and the sources in a directory named as
# a clone of that URL): luarocks --lua-version=5.4 install
# ./proxystore-<version>-1.src.rock then rehearses the published install,
# offline. The sources are the checkout's tracked files (everything but
# builds and rocks when this is not a git checkout).
ROCKSPEC  = rockspec/proxystore-$(VERSION)-1.rockspec
SRC_ROCK  = proxystore-$(VERSION)-1.src.rock
ROCK_DIR  = $(basename $(notdir $(shell sed -n 's/^ *url *= *"\([^"]*\)".*/\1/p' $(ROCKSPEC))))
dist:
	@rm -rf $(BUILD)/dist && mkdir -p $(BUILD)/dist/$(ROCK_DIR)
	@if git rev-parse --show-toplevel >/dev/null 2>&1 && \
	    [ "$$(git rev-parse --show-toplevel)" = "$(CURDIR)" ]; then \
	  git ls-files -z | xargs -0 cp --parents -t $(BUILD)/dist/$(ROCK_DIR); \
	else \
	  tar -cf - --exclude='./build*' --exclude=./.git --exclude='./*.rock' . | \
	    tar -xf - -C $(BUILD)/dist/$(ROCK_DIR); \
	fi
	@cp $(ROCKSPEC) $(BUILD)/dist/
	@rm -f $(SRC_ROCK)
	@cd $(BUILD)/dist && zip -qr $(CURDIR)/$(SRC_ROCK) $(notdir $(ROCKSPEC)) $(ROCK_DIR)
	@echo $(SRC_ROCK)

# Baselines for bench/redis.lua: raw hiredis and the server-bound limit.
REDIS_RAW = $(BUILD)/bin/redis_raw
$(REDIS_RAW): bench/redis_raw.c bench/c/redis_limit.h
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(OPT) $(CPPFLAGS) $(HIREDIS_CFLAGS) -o $@ $< $(HIREDIS_LIBS)

# The floor for bench/queue.lua: a task queue over Redis in C (hiredis).
QUEUE_RAW = $(BUILD)/bin/queue_raw
$(QUEUE_RAW): bench/queue_raw.c
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(OPT) $(CPPFLAGS) $(HIREDIS_CFLAGS) -o $@ $< $(HIREDIS_LIBS)

# The main job on a fresh machine: install what is missing for it (a
# compiler and the libraries: no test tools, no Redis), build, and run the
# MapReduce workflow on the embedded default store.
DEMO ?= examples/mapreduce.lua
demo:
	@sh .ci/deps.sh demo
	@$(MAKE) --no-print-directory all >/dev/null
	@$(BUILD)/bin/proxystore $(DEMO)

# Helpers only the benchmarks use (a memcpy baseline, C-API floors): a
# module of their own, never installed.
BENCH_SO = $(BUILD)/lib/proxystore/bench.so
$(BENCH_SO): bench/c/support.c bench/c/redis_limit.h src/core/buf.c src/core/bigalloc.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) -o $@ bench/c/support.c src/core/buf.c src/core/bigalloc.c

bench: all $(REDIS_RAW) $(QUEUE_RAW) $(BENCH_SO)
	@$(LUA) bench/run.lua

# The decoder fuzzer: clang's libFuzzer with ASan+UBSan, linked with every
# core source but the host's main. New inputs it finds go to
# build-fuzz/corpus; fuzz/corpus (the committed seeds) is only read.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_BIN      = build-fuzz/decode_fuzz
FUZZ_FLAGS    = -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=undefined
FUZZ_RUN_FLAGS ?= -max_len=65536 -rss_limit_mb=2048 -malloc_limit_mb=64 \
                -timeout=20 -print_final_stats=1 -artifact_prefix=build-fuzz/

$(FUZZ_BIN): fuzz/decode_fuzz.c $(CORE_SRC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE $(FUZZ_FLAGS) $(INCLUDES) $(LUA_CFLAGS) $(HIREDIS_CFLAGS) \
	  -o $@ fuzz/decode_fuzz.c $(CORE_SRC) $(LUA_LIBS) $(HIREDIS_LIBS) $(CRYPTO_LIBS) -lpthread -lm

fuzz: $(FUZZ_BIN)
	@mkdir -p build-fuzz/corpus
	$(FUZZ_BIN) $(FUZZ_RUN_FLAGS) -max_total_time=$(FUZZ_SECONDS) build-fuzz/corpus fuzz/corpus

clean:
	rm -rf build build-asan build-fuzz examples/embed/host proxystore-*.src.rock
