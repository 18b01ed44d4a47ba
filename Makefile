# proxystore: build, test and benchmark.
#
#   make          the C core (build/lib/proxystore/core.so) and the host binary
#   make deps     install missing Debian packages (apt-get; needs root)
#   make test     deps + build + every spec, then again under ASan+UBSan
#   make bench    benchmarks, a markdown table on stdout
#   make fuzz     builds the decoder's libFuzzer target (build-fuzz/) and runs
#                 it for FUZZ_SECONDS (default 60) from the corpus in fuzz/

LUA      ?= lua5.4
PKG      ?= pkg-config
CC       ?= cc
PREFIX   ?= /usr/local

LUA_CFLAGS  := $(shell $(PKG) --cflags lua5.4 2>/dev/null)
LUA_LIBS    := $(shell $(PKG) --libs lua5.4 2>/dev/null)
HIREDIS_CFLAGS := $(shell $(PKG) --cflags hiredis 2>/dev/null)
HIREDIS_LIBS   := $(shell $(PKG) --libs hiredis 2>/dev/null)

WARN     := -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
OPT      ?= -O2 -g
CPPFLAGS += -D_GNU_SOURCE
ALL_CFLAGS = $(WARN) $(OPT) -fPIC $(CPPFLAGS) $(LUA_CFLAGS) $(HIREDIS_CFLAGS) $(CFLAGS)
LIBS     := $(HIREDIS_LIBS) -lpthread -lm

HOST_SRC := $(wildcard src/main.c)
CORE_SRC := $(filter-out $(HOST_SRC),$(wildcard src/*.c))
HEADERS  := $(wildcard src/*.h)

BUILD    ?= build
CORE_OBJ  = $(CORE_SRC:src/%.c=$(BUILD)/obj/%.o)
CORE_SO   = $(BUILD)/lib/proxystore/core.so
HOST_BIN  = $(if $(HOST_SRC),$(BUILD)/bin/proxystore)

SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: demo all deps test test-plain test-asan bench clean asan fuzz
all: $(CORE_SO) $(HOST_BIN)

$(BUILD)/obj/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(CORE_SO): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared $(OPT) $(LDFLAGS) -o $@ $(CORE_OBJ) $(LIBS)

# The host binary links the core in and preloads it; -Wl,-E lets other C
# modules it loads find the Lua API (as lua(1) does).
$(BUILD)/bin/proxystore: $(BUILD)/obj/main.o $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(OPT) -Wl,-E $(LDFLAGS) -o $@ $^ $(LUA_LIBS) $(LIBS) -ldl

asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g $(SANITIZE)" LDFLAGS="$(SANITIZE)" all

deps:
	@sh .ci/deps.sh

test: deps
	@$(MAKE) --no-print-directory all asan >/dev/null
	@sh spec/run.sh

# Baselines for bench/redis.lua: raw hiredis and the server-bound limit.
REDIS_RAW = $(BUILD)/bin/redis_raw
$(REDIS_RAW): bench/redis_raw.c
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(OPT) $(CPPFLAGS) $(HIREDIS_CFLAGS) -o $@ $< $(HIREDIS_LIBS)

# The main job on a fresh machine: install what is missing, build, and run
# the MapReduce workflow on the embedded default store (no Redis needed).
DEMO ?= examples/mapreduce.lua
demo: deps
	@$(MAKE) --no-print-directory all >/dev/null
	@$(BUILD)/bin/proxystore $(DEMO)

bench: all $(REDIS_RAW)
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
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE $(FUZZ_FLAGS) -Isrc $(LUA_CFLAGS) $(HIREDIS_CFLAGS) \
	  -o $@ fuzz/decode_fuzz.c $(CORE_SRC) $(LUA_LIBS) $(HIREDIS_LIBS) -lpthread -lm

fuzz: $(FUZZ_BIN)
	@mkdir -p build-fuzz/corpus
	$(FUZZ_BIN) $(FUZZ_RUN_FLAGS) -max_total_time=$(FUZZ_SECONDS) build-fuzz/corpus fuzz/corpus

clean:
	rm -rf build build-asan build-fuzz
