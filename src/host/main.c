/*
 * main.c: the proxystore host binary.
 *
 * Reads like lua.c (Lua 5.4's stand-alone interpreter): main() runs pmain()
 * under lua_pcall with a message handler that appends a traceback, report()
 * prints errors to stderr, and the state is closed before exit. On top of
 * lua's options it preloads the linked-in core as "proxystore.core", puts
 * a searcher for its own Lua files, and takes --workers, --store,
 * --password-file, --version and --help, which it leaves for pools in
 * package.loaded["proxystore.host"]; `proxystore worker` runs a queue
 * pool's worker (worker_cmd.c).
 *
 * Passwords stay off the command line, where /proc/<pid>/cmdline shows
 * them to every user, for this process and every worker it forks: the
 * --store store's password comes from --password-file or the environment
 * (PROXYSTORE_PASSWORD). A password written into the --store URL anyway is
 * overwritten in argv, once copied, before any worker exists.
 *
 * package.path and package.cpath are exactly lua(1)'s: liblua reads
 * LUA_PATH_5_4/LUA_PATH and LUA_CPATH_5_4/LUA_CPATH (";;" is Lua's default
 * path) unless -E is given. proxystore's own Lua modules ("proxystore",
 * "proxystore.*") are found by a searcher placed right after the preload
 * one, in <checkout>/lua when the binary sits in <checkout>/build*\/bin (so
 * build/bin/proxystore runs the Lua files of its own checkout), then in
 * <bindir>/../share/lua/5.4 (the installed layout): the Lua face always
 * matches the linked-in core, whatever LUA_PATH says.
 *
 * Signals are lua.c's: SIGINT while Lua code runs (a pool's waits return
 * to Lua when a signal arrives) raises "interrupted!" through a hook.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include <editline/readline.h>

#include "proxystore.h"
#include "bigalloc.h"
#include "worker_cmd.h"

#define PROGNAME "proxystore"
#define PROMPT   "> "
#define PROMPT2  ">> "
#define MAXINPUT 512

static lua_State *globalL = NULL;
static const char *progname = PROGNAME;

/* ---- signals (as lua.c: a hook stops the running code on SIGINT) ----- */

static void lstop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

/* sigaction without SA_RESTART, as lua.c: a wait in poll() returns EINTR. */
static void setsignal(int sig, void (*handler)(int)) {
  struct sigaction sa;
  sa.sa_handler = handler;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

static void laction(int i) {
  int flag = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;
  setsignal(i, SIG_DFL);  /* a second SIGINT terminates the process */
  lua_sethook(globalL, lstop, flag, 1);
}

/* ---- messages --------------------------------------------------------- */

static void print_usage(FILE *f) {
  fprintf(f,
  "usage: %s [options] [script [args]]\n"
  "       %s run script [args]\n"
  "       %s worker URL [--queue NAME] [--workers N] [--secret-file F]\n"
  "Runs a Lua 5.4 script with proxystore preloaded (require \"proxystore\"),\n"
  "or a queue pool's worker ('proxystore worker --help').\n"
  "Options:\n"
  "  -e stat        execute string 'stat'\n"
  "  -i             enter interactive mode after executing 'script'\n"
  "  -l mod         require library 'mod' into global 'mod'\n"
  "  -l g=mod       require library 'mod' into global 'g'\n"
  "  -v             show version information\n"
  "  -E             ignore environment variables (LUA_INIT, LUA_PATH)\n"
  "  -W             turn warnings on\n"
  "  --workers N    default worker count for ps.pool() (default: cores)\n"
  "  --store URL    default store for ps.pool(): redis://host:port[/db],\n"
  "                 unix:///path.sock, file:///abs/dir or local:\n"
  "  --password-file F\n"
  "                 the --store Redis password: the first line of F (else\n"
  "                 $PROXYSTORE_PASSWORD; a password in the URL shows in\n"
  "                 the process list)\n"
  "  --version      print the proxystore and Lua versions and exit\n"
  "  --help         print this help and exit\n"
  "  --             stop handling options\n"
  "  -              stop handling options and execute stdin\n"
  "With no script and no -e, runs an interactive prompt when stdin is a\n"
  "terminal and reads a script from stdin otherwise. The script sees its\n"
  "arguments in 'arg' as lua builds it (arg[0] the script, arg[1..] its\n"
  "arguments, the interpreter and options at negative indices) and as '...'.\n"
  "Modules are found through LUA_PATH and LUA_CPATH as lua finds them;\n"
  "proxystore's own Lua files come from the checkout the binary was built\n"
  "in (build/bin -> lua/) or from <bindir>/../share/lua/5.4.\n"
  "Examples:\n"
  "  %s examples/mapreduce.lua\n"
  "  %s --workers 4 --store redis://localhost:6379 run job.lua in.txt\n"
  "  %s -e 'print(require(\"proxystore\")._VERSION)'\n"
  "  echo 'print(1 + 1)' | %s -\n",
  PROGNAME, PROGNAME, PROGNAME, PROGNAME, PROGNAME, PROGNAME, PROGNAME);
}

static void l_message(const char *pname, const char *msg) {
  if (pname) fprintf(stderr, "%s: ", pname);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

/* A library error already starts with "proxystore:": one prefix is enough. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    const char *pname = progname;
    if (msg && pname && strncmp(msg, PROGNAME ":", sizeof PROGNAME) == 0)
      pname = NULL;
    l_message(pname, msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  return status;
}

/*
 * Unlike lua.c, error objects with __tostring (proxystore errors) also get
 * a traceback, and a task error from a pool adds the worker's traceback.
 */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
    if (lua_type(L, 1) == LUA_TTABLE &&
        lua_getfield(L, 1, "traceback") == LUA_TSTRING) {
      msg = lua_pushfstring(L, "%s\nworker %s", msg, lua_tostring(L, -1));
    }
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  globalL = L;
  setsignal(SIGINT, laction);
  int status = lua_pcall(L, narg, nres, base);
  setsignal(SIGINT, SIG_DFL);
  lua_remove(L, base);
  return status;
}

static void print_version(void) {
  printf("%s %s\n%s\n", PROGNAME, PROXYSTORE_VERSION, LUA_COPYRIGHT);
  fflush(stdout);
}

/* arg[0] is the script (or the interpreter when there is none), the
 * interpreter and options go to negative indices, as lua does it. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  if (script == argc) script = 0;
  int narg = argc - (script + 1);
  lua_createtable(L, narg, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static int dofile(lua_State *L, const char *name) {
  return dochunk(L, luaL_loadfile(L, name));
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l mod or -l g=mod: global g (or mod) = require(mod). */
static int dolibrary(lua_State *L, char *globname) {
  char *modname = strchr(globname, '=');
  if (modname == NULL) {
    modname = globname;
  } else {
    *modname = '\0';
    modname++;
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  int status = docall(L, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, globname);
  return report(L, status);
}

static int pushargs(lua_State *L) {
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  int n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  int i;
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static int handle_script(lua_State *L, char **argv) {
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0)
    fname = NULL;  /* stdin */
  int status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = docall(L, n, LUA_MULTRET);
  }
  return report(L, status);
}

/* ---- options ------------------------------------------------------------ */

#define has_error   1
#define has_i       2
#define has_v       4
#define has_e       8
#define has_E       16
#define has_help    32
#define has_version 64

typedef struct hostopts {
  const char *workers;
  const char *store;
  const char *password_file;
  int password;        /* stack index of the password, 0: none */
  const char *bad;     /* the offending argument when has_error */
  const char *why;     /* what is wrong with it */
} hostopts;

/* Value of a long option: "--opt=v" or "--opt v". */
static const char *longval(char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  const char *a = argv[*i];
  if (a[n] == '=') return a + n + 1;
  if (argv[*i + 1] == NULL) return NULL;
  return argv[++*i];
}

/*
 * Sorts out the options needed before any Lua code runs; *first is the
 * script's index (argc when there is none) or the bad argument's.
 * "run" is accepted once where the script would be: "proxystore run x.lua".
 */
static int collectargs(char **argv, int *first, hostopts *ho) {
  int args = 0;
  int i = 1;
  if (argv[0] == NULL) { *first = 0; return 0; }
  int seen_run = 0;
  for (; argv[i] != NULL; i++) {
    *first = i;
    const char *a = argv[i];
    if (a[0] != '-') {
      if (seen_run || strcmp(a, "run") != 0) return args;
      /* the script comes right after "run" ("-" is stdin): options there
       * would leave "run" running nothing */
      const char *next = argv[i + 1];
      if (next == NULL || (next[0] == '-' && next[1] != '\0')) {
        ho->bad = a;
        ho->why = "needs a script right after it (options go before 'run')";
        return has_error;
      }
      seen_run = 1;  /* "run" is a verb; ./run runs a file called run */
      continue;
    }
    switch (a[1]) {
      case '-':
        if (a[2] == '\0') { *first = i + 1; return args; }
        if (strcmp(a, "--help") == 0) { args |= has_help; break; }
        if (strcmp(a, "--version") == 0) { args |= has_version; break; }
        if (strncmp(a, "--workers", 9) == 0 && (a[9] == '\0' || a[9] == '=')) {
          const char *v = longval(argv, &i, "--workers");
          char *end;
          long n = v ? strtol(v, &end, 10) : 0;
          if (v == NULL || *v == '\0' || *end != '\0' || n < 1 || n > 4096) {
            ho->bad = a;
            ho->why = "needs a worker count between 1 and 4096";
            return has_error;
          }
          ho->workers = v;
          break;
        }
        if (strncmp(a, "--store", 7) == 0 && (a[7] == '\0' || a[7] == '=')) {
          const char *v = longval(argv, &i, "--store");
          if (v == NULL || *v == '\0') {
            ho->bad = a;
            ho->why = "needs a store URL";
            return has_error;
          }
          ho->store = v;
          break;
        }
        if (strncmp(a, "--password-file", 15) == 0 &&
            (a[15] == '\0' || a[15] == '=')) {
          const char *v = longval(argv, &i, "--password-file");
          if (v == NULL || *v == '\0') {
            ho->bad = a;
            ho->why = "needs a file name";
            return has_error;
          }
          ho->password_file = v;
          break;
        }
        ho->bad = a;
        ho->why = "is not a known option";
        return has_error;
      case '\0':
        return args;  /* script "-": stdin */
      case 'E':
        if (a[2] != '\0') goto bad;
        args |= has_E;
        break;
      case 'W':
        if (a[2] != '\0') goto bad;
        break;
      case 'i':
        args |= has_i;  /* -i implies -v */
        /* FALLTHROUGH */
      case 'v':
        if (a[2] != '\0') goto bad;
        args |= has_v;
        break;
      case 'e':
        args |= has_e;
        /* FALLTHROUGH */
      case 'l':
        if (a[2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') {
            ho->bad = a;
            ho->why = "needs an argument";
            *first = i - 1;
            return has_error;
          }
        }
        break;
      default:
      bad:
        ho->bad = a;
        ho->why = "is not a known option";
        return has_error;
    }
  }
  *first = i;
  return args;
}

/* Runs -e, -l and -W in order; 0 when one of them fails. */
static int runargs(lua_State *L, char **argv, int n) {
  for (int i = 1; i < n; i++) {
    const char *a = argv[i];
    if (a[0] != '-') continue;  /* "run", or an option's value */
    if (a[1] == '-') {
      /* skip the value of "--workers N" / "--store URL" / ... */
      if (strcmp(a, "--workers") == 0 || strcmp(a, "--store") == 0 ||
          strcmp(a, "--password-file") == 0)
        i++;
      continue;
    }
    int option = a[1];
    if (option == 'e' || option == 'l') {
      char *extra = argv[i] + 2;
      if (*extra == '\0') extra = argv[++i];
      int status = option == 'e'
                   ? dostring(L, extra, "=(command line)")
                   : dolibrary(L, extra);
      if (status != LUA_OK) return 0;
    } else if (option == 'W') {
      lua_warning(L, "@on", 0);
    }
  }
  return 1;
}

static int handle_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_5_4";
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dofile(L, init + 1);
  return dostring(L, init, name);
}

/* ---- the interactive prompt (lua.c's) ---------------------------------- */

/*
 * On a terminal, lines are read with libedit's readline interface (line
 * editing, history; BSD-licensed, where GNU readline would put the binary
 * under the GPL). Otherwise with fgets, the prompt still written.
 */
static int use_readline;

static char *read_input(char *buf, const char *prompt) {
  if (use_readline) return readline(prompt);
  fputs(prompt, stdout);
  fflush(stdout);
  return fgets(buf, MAXINPUT, stdin);
}

static void free_input(char *line) {
  if (use_readline) free(line);
}

static void save_line(const char *line) {
  if (use_readline && line[0] != '\0') add_history(line);
}

static const char *get_prompt(lua_State *L, int firstline) {
  if (lua_getglobal(L, firstline ? "_PROMPT" : "_PROMPT2") == LUA_TNIL)
    return firstline ? PROMPT : PROMPT2;
  return luaL_tolstring(L, -1, NULL);
}

#define EOFMARK "<eof>"
#define marklen (sizeof(EOFMARK) / sizeof(char) - 1)

static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t lmsg;
    const char *msg = lua_tolstring(L, -1, &lmsg);
    if (lmsg >= marklen && strcmp(msg + lmsg - marklen, EOFMARK) == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

static int pushline(lua_State *L, int firstline) {
  char buf[MAXINPUT];
  const char *prmt = get_prompt(L, firstline);
  char *b = read_input(buf, prmt);
  lua_settop(L, firstline ? 0 : 1);  /* drop the prompt(s) */
  if (b == NULL) return 0;
  size_t l = strlen(b);
  if (l > 0 && b[l - 1] == '\n') b[--l] = '\0';
  if (firstline && b[0] == '=')
    lua_pushfstring(L, "return %s", b + 1);
  else
    lua_pushlstring(L, b, l);
  free_input(b);
  return 1;
}

static int addreturn(lua_State *L) {
  const char *line = lua_tostring(L, -1);
  const char *retline = lua_pushfstring(L, "return %s;", line);
  int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
  if (status == LUA_OK) {
    lua_remove(L, -2);
    save_line(line);
  } else {
    lua_pop(L, 2);
  }
  return status;
}

static int multiline(lua_State *L) {
  for (;;) {
    size_t len;
    const char *line = lua_tolstring(L, 1, &len);
    int status = luaL_loadbuffer(L, line, len, "=stdin");
    if (!incomplete(L, status) || !pushline(L, 0)) {
      save_line(line);
      return status;
    }
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
}

static int loadline(lua_State *L) {
  lua_settop(L, 0);
  if (!pushline(L, 1)) return -1;
  int status = addreturn(L);
  if (status != LUA_OK) status = multiline(L);
  lua_remove(L, 1);
  return status;
}

static void l_print(lua_State *L) {
  int n = lua_gettop(L);
  if (n > 0) {
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
      l_message(progname, lua_pushfstring(L, "error calling 'print' (%s)",
                                          lua_tostring(L, -1)));
  }
}

static void doREPL(lua_State *L) {
  int status;
  const char *oldprogname = progname;
  progname = NULL;
  use_readline = isatty(0);
  while ((status = loadline(L)) != -1) {
    if (status == LUA_OK) status = docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK)
      l_print(L);
    else
      report(L, status);
  }
  lua_settop(L, 0);
  fputs("\n", stdout);
  fflush(stdout);
  progname = oldprogname;
}

/* ---- proxystore set-up ---------------------------------------------------- */

/* The directory holding the running binary, or NULL. */
static char *bindir(char *buf, size_t size) {
  ssize_t n = readlink("/proc/self/exe", buf, size - 1);
  if (n <= 0) return NULL;
  buf[n] = '\0';
  char *slash = strrchr(buf, '/');
  if (slash == NULL) return NULL;
  *slash = '\0';
  return buf;
}

static int isfile(const char *path) {
  return access(path, R_OK) == 0;
}

/*
 * A package.searchers entry for "proxystore" and "proxystore.*": the Lua
 * file from the binary's own directories (upvalue 1, a path template;
 * upvalue 2, package.searchpath), as Lua's own searcher loads one. Other
 * names are left to the standard searchers, with nothing added to their
 * "module not found" message.
 */
static int searcher_own(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (strcmp(name, "proxystore") != 0 && strncmp(name, "proxystore.", 11) != 0)
    return 0;
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2)) return 1;  /* the "no file" list */
  lua_pop(L, 1);
  const char *file = lua_tostring(L, -1);
  if (luaL_loadfile(L, file) != LUA_OK)
    return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s",
                      name, file, lua_tostring(L, -1));
  lua_pushstring(L, file);
  return 2;
}

/* Inserts searcher_own after the preload searcher (see the top). */
static void add_own_searcher(lua_State *L) {
  char dir[PATH_MAX];
  if (bindir(dir, sizeof dir) == NULL) return;
  lua_getglobal(L, "package");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  /* <checkout>/build*\/bin/proxystore: use <checkout>/lua */
  char probe[PATH_MAX + 64];
  snprintf(probe, sizeof probe, "%s/../../lua/proxystore/init.lua", dir);
  const char *bin = strrchr(dir, '/');
  if (bin && strcmp(bin, "/bin") == 0 && strstr(dir, "/build") && isfile(probe)) {
    lua_pushfstring(L, "%s/../../lua/?.lua;%s/../../lua/?/init.lua;", dir, dir);
    luaL_addvalue(&b);
  }
  lua_pushfstring(L, "%s/../share/lua/5.4/?.lua;%s/../share/lua/5.4/?/init.lua",
                  dir, dir);
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_getfield(L, -2, "searchpath");
  lua_pushcclosure(L, searcher_own, 2);   /* path, searchpath */
  lua_getfield(L, -2, "searchers");
  lua_Integer n = luaL_len(L, -1);
  for (lua_Integer i = n; i >= 2; i--) {  /* table.insert(searchers, 2, f) */
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 3);  /* searchers, the searcher, package */
}

#define MAX_PASSWORD 4096

/*
 * Pushes the --store password: the first line of --password-file (without
 * its line end), else $PROXYSTORE_PASSWORD, else nothing. Returns 0 and
 * pushes an error message when the file cannot be read, or its first line
 * is empty or too long. The file is closed before anything is pushed.
 */
static int push_password(lua_State *L, const hostopts *ho) {
  if (ho->password_file == NULL) {
    const char *env = getenv("PROXYSTORE_PASSWORD");
    if (env && *env) lua_pushstring(L, env);
    else lua_pushnil(L);
    return 1;
  }
  FILE *f = fopen(ho->password_file, "r");
  if (f == NULL) {
    lua_pushfstring(L, "cannot read password file '%s': %s",
                    ho->password_file, strerror(errno));
    return 0;
  }
  char line[MAX_PASSWORD + 2];
  int got = fgets(line, sizeof line, f) != NULL;
  int failed = ferror(f);
  fclose(f);
  size_t len = got ? strlen(line) : 0;
  int whole = len > 0 && line[len - 1] == '\n';
  if (whole) line[--len] = '\0';
  if (len > 0 && line[len - 1] == '\r') line[--len] = '\0';
  const char *why = failed ? "could not be read"
                    : len == 0 ? "has an empty first line"
                    : len > MAX_PASSWORD ? "has a first line over 4096 bytes"
                    : NULL;
  if (why == NULL) lua_pushlstring(L, line, len);
  memset(line, 0, sizeof line);
  if (why) {
    lua_pushfstring(L, "password file '%s' %s", ho->password_file, why);
    return 0;
  }
  return 1;
}

/*
 * Overwrites, in place, whatever in a store URL may be a password (as
 * proxystore.url redacts it: everything between "://" and the last '@',
 * and a password query parameter to the end), so that /proc/<pid>/cmdline
 * of this process and of the workers it forks no longer shows it. Returns
 * whether anything was hidden.
 */
/* The query parameter name in [from, to), percent-decoded, says "pass". */
static int names_password(const char *from, const char *to) {
  char name[256];
  size_t n = 0;
  for (const char *p = from; p < to && n + 1 < sizeof name; p++) {
    unsigned v;
    if (*p == '%' && to - p >= 3 && sscanf(p + 1, "%2x", &v) == 1 &&
        isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2])) {
      name[n++] = (char)v;
      p += 2;
    } else {
      name[n++] = *p;
    }
  }
  name[n] = '\0';
  return strcasestr(name, "pass") != NULL;
}

static int scrub_url(char *url) {
  int hidden = 0;
  char *auth = strstr(url, "://");
  if (auth && !((strncasecmp(url, "file:", 5) == 0 ||
                  strncasecmp(url, "unix:", 5) == 0) && auth[3] == '/')) {
    auth += 3;
    char *at = strrchr(auth, '@');
    for (char *p = auth; at && p < at; p++, hidden = 1) *p = '*';
  }
  for (char *q = url; (q = strpbrk(q, "?&;")) != NULL; q++) {
    char *eq = strchr(q + 1, '=');
    char *end = strpbrk(q + 1, "&;?#");
    if (eq == NULL || (end && end < eq)) continue;
    if (!names_password(q + 1, eq)) continue;
    for (char *p = eq + 1; *p; p++, hidden = 1) *p = '*';
    break;
  }
  return hidden;
}

/*
 * package.preload["proxystore.core"] = the linked-in core, and
 * package.loaded["proxystore.host"] = {workers=, store=, password=,
 * binary=, version=} for pools created with no options.
 */
static void setup_proxystore(lua_State *L, const hostopts *ho) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_proxystore_core);
  lua_setfield(L, -2, "proxystore.core");
  lua_pop(L, 1);

  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_createtable(L, 0, 4);
  if (ho->workers) {
    lua_pushinteger(L, strtol(ho->workers, NULL, 10));
    lua_setfield(L, -2, "workers");
  }
  if (ho->store) {
    lua_pushstring(L, ho->store);
    lua_setfield(L, -2, "store");
  }
  if (ho->password) {
    lua_pushvalue(L, ho->password);
    lua_setfield(L, -2, "password");
  }
  char dir[PATH_MAX];
  if (bindir(dir, sizeof dir)) {
    lua_pushfstring(L, "%s/%s", dir, PROGNAME);
    lua_setfield(L, -2, "binary");
  }
  lua_pushliteral(L, PROXYSTORE_VERSION);
  lua_setfield(L, -2, "version");
  lua_setfield(L, -2, "proxystore.host");
  lua_pop(L, 1);
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  int script = argc;
  hostopts ho = {NULL, NULL, NULL, 0, NULL, NULL};
  int args = collectargs(argv, &script, &ho);
  luaL_checkversion(L);
  if (args == has_error) {
    fprintf(stderr, "%s: '%s' %s\n"
                    "usage: %s [options] [script [args]]; try '%s --help'\n",
            PROGNAME, ho.bad, ho.why, PROGNAME, PROGNAME);
    return 0;
  }
  if (args & has_help) {
    print_usage(stdout);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (args & (has_version | has_v)) {
    print_version();
    if (args & has_version) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  if (args & has_E) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  if (!push_password(L, &ho)) {
    fprintf(stderr, "%s: %s\n", PROGNAME, lua_tostring(L, -1));
    return 0;
  }
  if (!lua_isnil(L, -1)) ho.password = lua_gettop(L);
  luaL_openlibs(L);
  add_own_searcher(L);
  setup_proxystore(L, &ho);
  /* The URL is copied into Lua now: hide its password from the process
   * list before the script (and its workers) run. */
  if (ho.store && scrub_url((char *)ho.store))
    fprintf(stderr, "%s: warning: the --store URL holds a password, which "
            "other users could see in the process list; use "
            "--password-file or PROXYSTORE_PASSWORD\n", PROGNAME);
  /* "worker" where the script would be is the worker command (after
   * "run" it is a script called worker) */
  if (script < argc && strcmp(argv[script], "worker") == 0 &&
      strcmp(argv[script - 1], "run") != 0) {
    lua_pushboolean(L, ps_host_worker(L, argc - script, argv + script) == 0);
    return 1;
  }
  createargtable(L, argv, argc, script);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (!(args & has_E) && handle_luainit(L) != LUA_OK) return 0;
  if (!runargs(L, argv, script)) return 0;
  if (script < argc && handle_script(L, argv + script) != LUA_OK) return 0;
  if (args & has_i) {
    doREPL(L);
  } else if (script == argc && !(args & (has_e | has_v))) {
    if (isatty(0)) {
      print_version();
      doREPL(L);
    } else {
      if (dofile(L, NULL) != LUA_OK) return 0;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    l_message(argv[0], "cannot create state: not enough memory");
    return EXIT_FAILURE;
  }
  /* This program owns its state: large strings and tables go on warm or
   * huge-page memory (a module never does this to its host's state). */
  ps_alloc_install(L);
  lua_pushcfunction(L, &pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int result = lua_toboolean(L, -1);
  report(L, status);
  lua_close(L);
  return (result && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}
